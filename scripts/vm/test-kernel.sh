#!/usr/bin/env bash
# CI entry for the kernel tests (called by scripts/test.sh): prepares the VM cache, then boots one VM that
# runs every kernel scenario (scenario-kernel-all.sh). The host-built debug binaries must exist
# (`swift build --build-tests`). Exit status = the scenarios' (124 timeout, 125 no status from the VM).
# Options: -t SECS (default 1500; 591 s in a quiet CI run on a 2-core host under TCG, 823-900+ s on a busy one), -r RESULTS_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
timeout=1500
results=${VM_TEST_RESULTS:-/tmp/iscsi-nbd-vm-$$}
while getopts "t:r:" o; do
  case $o in
    t) timeout=$OPTARG ;;
    r) results=$OPTARG ;;
    *) echo "usage: $0 [-t SECS] [-r RESULTS_DIR]" >&2; exit 2 ;;
  esac
done
for b in .build/debug/iscsi-nbd .build/debug/nbd-netlink-check; do
  [[ -x $b ]] || { echo "$b is missing: run swift build --build-tests first" >&2; exit 1; }
done
scripts/vm/run-in-vm.sh --prepare
# The guest sees the host's root read-only, but with a fresh tmpfs on /tmp: a checkout under /tmp (CI's
# clones may live there) is invisible inside. Then the scenarios and the two binaries are staged under
# /var/tmp and the VM runs from there.
case "$(pwd -P)/" in
  /tmp/*)
    stage=$(mktemp -d /var/tmp/iscsi-nbd-vm-stage.XXXXXX)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/scripts" "$stage/.build/debug"
    cp -a scripts/vm "$stage/scripts/"
    cp -L .build/debug/iscsi-nbd .build/debug/nbd-netlink-check "$stage/.build/debug/"
    echo "kernel tests: the checkout is under /tmp (hidden in the guest); staged in $stage"
    cd "$stage"
    ;;
esac
start=$SECONDS
rc=0
scripts/vm/run-in-vm.sh -q -t "$timeout" -r "$results" scripts/vm/scenario-kernel-all.sh || rc=$?
echo "kernel tests: rc=$rc in $((SECONDS - start)) s; results in $results"
cat "$results/scenarios.txt" 2>/dev/null || true
for f in "$results"/*/timings.txt; do [[ -f $f ]] && { echo "-- $f"; cat "$f"; }; done
if ((rc != 0)); then
  echo "---- last lines of job.log" >&2
  tail -n 60 "$results/job.log" >&2 || true
fi
exit $rc

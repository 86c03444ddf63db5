#!/usr/bin/env bash
# Sets up and runs the whole test suite:
#   1. installs the Debian packages (scripts/install-deps.sh --vm),
#   2. builds, checks that the generated man page dist/man/iscsi-nbd.8 matches the command line
#      (scripts/gen-man.sh --check), runs the unit tests and the integration tests (each suite starts its own
#      tgtd / isnsd on loopback and drives real clients: libnbd, nbdinfo, nbdcopy, fio),
#   3. runs the kernel tests (/dev/nbdN over netlink) in a QEMU VM booting Debian's kernel,
#   3b. fuzzes every decoder/parser and the NBD connection handler for ~10 s each (scripts/fuzz/run.sh --ci; about 2 minutes with the build),
#   3c. runs the demo (scripts/demo.sh: the README's first command, release build included),
#   3d. packages that release build (scripts/package.sh: the .deb and the systemd-sysext image) and boots
#       systemd + udev guests that install and use them (scripts/vm/test-boot.sh: the open-iscsi guide,
#       a reboot, the sysext image, the Butane example, the service's bad days: restart, kill -9 and
#       upgrade under fio, bad records, the target down at boot and at poweroff),
#   4. runs a short benchmark smoke on that release build so the benchmark script cannot rot.
# Under CI=true a missing peer is a failure, never a skip. Options: --no-vm, --no-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

vm=1 bench=1
for a in "$@"; do
    case "$a" in
        --no-vm) vm=0 ;;
        --no-bench) bench=0 ;;
        *) echo "usage: $0 [--no-vm] [--no-bench]" >&2; exit 2 ;;
    esac
done

start=$SECONDS
section() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - start)); }

section "dependencies"
scripts/install-deps.sh --vm

section "build"
swift build --build-tests

section "man pages: dist/man/iscsi-nbd.8 matches the command line's help"
scripts/gen-man.sh --check

section "demo: the README's first command (release build, local tgtd, serve, nbdinfo, write + read-back)"
# Also the release build the benchmark smoke then uses; a release-only compiler crash shows up here.
scripts/demo.sh

section "package: the .deb and the systemd-sysext image (scripts/package.sh)"
scripts/package.sh

section "fuzzing (short run)"
scripts/fuzz/run.sh --ci

section "unit and integration tests"
swift test --skip-build 2>&1 | tee /tmp/iscsi-nbd-swift-test.log

if ((vm)) && [[ -x scripts/vm/test-kernel.sh ]]; then
    section "kernel tests in a VM"
    scripts/vm/test-kernel.sh
fi

if ((vm)); then
    section "boot tests: systemd + udev guests with the package (scripts/vm/test-boot.sh)"
    scripts/vm/test-boot.sh
fi

if ((bench)) && [[ -x scripts/bench.sh ]]; then
    section "benchmark smoke"
    scripts/bench.sh --smoke
fi

section "done"
# One closing line for whoever reads the log's end: the Swift test count (Swift Testing's summary line).
passed=$(sed -n 's/.*Test run with \([0-9]*\) tests\{0,1\} in .* passed.*/\1/p' /tmp/iscsi-nbd-swift-test.log | tail -n 1)
echo "tests: ${passed:-0} passed, 0 failed"

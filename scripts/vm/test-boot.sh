#!/usr/bin/env bash
# CI entry for the boot tests (called by scripts/test.sh after scripts/package.sh): real systemd + udev
# guests (scripts/vm/boot-systemd.sh) that install what users install and boot as users boot:
#   guide   boot 1: the .deb beside open-iscsi, the open-iscsi guide verbatim, socket activation, udev's
#                   names (equal to open-iscsi's), a mount unit + an fstab _netdev line, files written;
#           boot 2: a reboot: both mounted, no failed unit, no timeout, the files intact, boot 1's
#                   shutdown in order with no I/O error                         (scripts/vm/boot/job-guide.sh)
#   sysext  the systemd-sysext image merged by hand serves a LUN             (scripts/vm/boot/job-sysext.sh)
#   butane  dist/butane/iscsi-nbd.bu applied as Ignition would, two boots    (scripts/vm/boot/job-butane.sh)
#   life    the bad days over four boots: restart, kill -9 and upgrade under fio on a mounted disk; bad
#           records at boot; the target down at boot; power off with the target gone (job-life.sh)
# Prints each boot's timings (boot to job start, job, shutdown) and a summary; exit status 0 when every
# boot passed. Options: -r RESULTS_DIR, -o ONLY (guide|sysext|butane|life, repeatable).
set -euo pipefail
cd "$(dirname "$0")/../.."
results=${VM_TEST_RESULTS:-/tmp/iscsi-nbd-boot-$$}
only=()
while getopts "r:o:" o; do
  case $o in
    r) results=$OPTARG ;;
    o) only+=("$OPTARG") ;;
    *) echo "usage: $0 [-r RESULTS_DIR] [-o guide|sysext|butane|life]..." >&2; exit 2 ;;
  esac
done
wanted() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }

deb=$(ls .build/package/iscsi-nbd_*.deb 2>/dev/null | head -n 1 || true)
raw=.build/package/iscsi-nbd-x86-64.raw
[[ -n $deb && -e $raw ]] || { echo "test-boot: no package in .build/package (run scripts/package.sh first)" >&2; exit 1; }
version=$(dpkg-deb -f "$deb" Version)
scripts/vm/boot-systemd.sh --prepare >/dev/null

# Everything the guests need sits in one staging directory, shared with them as the job's directory
# (/run/vm/job): the host's /tmp (where CI's clone may be) is not visible in the guest.
stage=$(mktemp -d /var/tmp/iscsi-nbd-boot.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp scripts/vm/boot/* "$stage/"
cp "$deb" "$stage/"
cp -L "$raw" "$stage/iscsi-nbd-x86-64.raw"
mkdir -p "$results"

# A seed: the test target enabled; whiteouts for iSCSI state the host may have (its tests' iscsiadm
# records), so every guest starts from open-iscsi's pristine /etc/iscsi.
seed() {
  local dir=$stage/seed-$1
  mkdir -p "$dir/etc/systemd/system/multi-user.target.wants" "$dir/etc/iscsi"
  cp scripts/vm/boot/test-target.service "$dir/etc/systemd/system/"
  ln -s /etc/systemd/system/test-target.service "$dir/etc/systemd/system/multi-user.target.wants/"
  for state in nodes send_targets isns ifaces; do
    [ -e "/etc/iscsi/$state" ] && mknod "$dir/etc/iscsi/$state" c 0 0
  done
  # The host is a container image: its policy-rc.d forbids maintainer scripts to start or restart
  # services (exit 101), which a real machine allows; and man-db's trigger rebuilds its index after
  # every package (80 s under TCG), which tests nothing of ours.
  mkdir -p "$dir/usr/sbin" "$dir/var/lib/man-db"
  [ -e /usr/sbin/policy-rc.d ] && mknod "$dir/usr/sbin/policy-rc.d" c 0 0
  [ -e /var/lib/man-db/auto-update ] && mknod "$dir/var/lib/man-db/auto-update" c 0 0
  echo "$dir"
}

summary=() rc_all=0
boot() {  # boot NAME DISK SEED-or-"" JOB [boot-systemd options...]
  local name=$1 disk=$2 seed=$3 job=$4; shift 4
  local out=$results/$name rc=0
  mkdir -p "$out"
  echo "== boot $name"
  scripts/vm/boot-systemd.sh -q -d "$disk" ${seed:+--seed "$seed"} -r "$out" -e "EXPECT_VERSION=$version" "$@" \
    "$stage/$job" 2> >(tee "$out/boot.stderr" >&2) || rc=$?
  cat "$out/job.log" 2>/dev/null | grep -E '^(ok|FAIL) |failed checks' || true
  local timing
  timing=$(sed -n 's/.*timings (s, wall clock): //p' "$out/boot.stderr" | sed 's/ \[guest uptime.*\],//')
  summary+=("$(printf '%-8s rc=%-3s %s' "$name" "$rc" "$timing")")
  if [ "$rc" != 0 ]; then
    rc_all=1
    echo "---- $name: last lines of job.log" >&2; tail -n 40 "$out/job.log" >&2 || true
  fi
}

start=$SECONDS
if wanted guide; then
  s=$(seed guide)
  boot guide-1 "$stage/guide.img" "$s" job-guide.sh -t 600
  boot guide-2 "$stage/guide.img" "" job-guide.sh -t 300
fi
if wanted sysext; then
  s=$(seed sysext)
  boot sysext "$stage/sysext.img" "$s" job-sysext.sh -t 300
fi
if wanted butane; then
  s=$(seed butane)
  # The target on the Butane example's portal, 10.0.0.1:3260 (on the guest's lo), and Flatcar's
  # ensure-sysext.service, which Debian lacks; then the Butane file itself, as Ignition applies it.
  mkdir -p "$s/etc/systemd/system/test-target.service.d" "$s/etc/systemd/system/network.target.wants" "$s/etc/systemd/system/sysinit.target.wants"
  printf "[Service]\nEnvironment=PORTAL=10.0.0.1:3260 TARGET_SET=butane\n" > "$s/etc/systemd/system/test-target.service.d/portal.conf"
  cp scripts/vm/boot/test-address.service scripts/vm/boot/ensure-sysext.service "$s/etc/systemd/system/"
  ln -s /etc/systemd/system/test-address.service "$s/etc/systemd/system/network.target.wants/"
  ln -s /etc/systemd/system/ensure-sysext.service "$s/etc/systemd/system/sysinit.target.wants/"
  python3 scripts/vm/boot/apply-butane.py dist/butane/iscsi-nbd.bu .build/package "$s" | sed 's/^/  butane: /'
  boot butane-1 "$stage/butane.img" "$s" job-butane.sh -t 300
  boot butane-2 "$stage/butane.img" "" job-butane.sh -t 300
fi

if wanted life; then
  # A newer package to install over the running one: the same files, a higher Debian version.
  rm -rf "$stage/newer" && dpkg-deb -R "$deb" "$stage/newer"
  sed -i "s/^Version: .*/Version: ${version}+1/" "$stage/newer/DEBIAN/control"
  dpkg-deb --root-owner-group -b "$stage/newer" "$stage/iscsi-nbd_${version}+1_amd64.deb" >/dev/null
  rm -rf "$stage/newer"
  s=$(seed life)
  for n in 1 2 3 4; do boot life-$n "$stage/life.img" "$([ $n = 1 ] && echo "$s")" job-life.sh -t 420; done
fi

echo "== boot tests ($version): $((SECONDS - start)) s; results in $results"
printf '%s\n' "${summary[@]}" | tee "$results/summary.txt"
exit $rc_all

#!/bin/bash
# scenario-kernel-all.sh - every kernel scenario in one VM boot (CI: scripts/vm/test-kernel.sh).
#   1. scenario-netlink.sh  (NBDKernel netlink codec against the real nbd driver, nbdkit server)
#   2. scenario-daemon.sh   (daemon with 2 queues per device, login/logout, by-path, ext4, fio, tgtd + LIO, attach/detach)
#   3. scenario-discovery-chap.sh (discovery CHAP against LIO)
#   4. scenario-resize.sh   (online resize: /dev/nbdN grows with the LUN while mounted, ioctl and netlink; a shrink
#                            is a fail-stop)
#   5. scenario-crash.sh    (kill -9 of the daemon and of attach during fio: re-adoption, 0 errors; too late: EIO)
#   6. scenario-trim.sh     (LIO thin LUN: fstrim and nbdsh trim/zero punch holes in the backstore file; request sizes)
# Each writes its results under $VM_RESULTS/<name>/. Stops at the first failure.
# vm-apt: nbdkit e2fsprogs python3 tgt fio python3-libnbd sysstat
set -u
DIR=$(dirname "${VM_SCRIPT:-$0}")
: "${VM_RESULTS:=/tmp/vm-results}"
# The daemon scenario serves each device over 2 sockets (2 kernel hardware queues, each on its own event
# loop): its ext4 round trips, target restart and fio verify then run on the multi-queue path.
export NBD_CONNECTIONS=${NBD_CONNECTIONS:-2}
rc=0
for s in netlink daemon discovery-chap resize crash trim; do
  echo "==== scenario-$s ===="
  t0=${EPOCHREALTIME/./}
  VM_SCRIPT=$DIR/scenario-$s.sh VM_RESULTS=$VM_RESULTS/$s bash "$DIR/scenario-$s.sh"
  rc=$?
  t1=${EPOCHREALTIME/./}
  printf 'scenario-%-10s rc=%s %ss\n' "$s" "$rc" "$(( (t1 - t0) / 1000000 ))" | tee -a "$VM_RESULTS/scenarios.txt"
  [ $rc = 0 ] || break
done
exit $rc

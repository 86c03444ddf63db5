#!/bin/bash
# scenario-multiconn.sh - inside the VM: is more than one socket per /dev/nbdN faster? (kernel multi-queue)
#   tgtd LUN -> `iscsi-nbd attach --connections N` for each N in $CONNS_LIST -> fio randread/randwrite 4k
#   qd32 and read 1M qd8 (FIO_RUNTIME s each) -> detach. Numbers land in $VM_RESULTS/summary.txt.
# Run: scripts/vm/run-in-vm.sh -t 400 -r /tmp/vm-mc scripts/vm/scenario-multiconn.sh
# Knobs (-e VAR=VAL): CONNS_LIST ("1 2 4"), FIO_RUNTIME (5), ISCSI_NBD.
# vm-apt: tgt fio python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT
ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
BIN=${ISCSI_NBD:-$ROOT/.build/debug/iscsi-nbd}
IQN=iqn.2026-11.test.iscsi-nbd:mc
connected() { [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" != 0 ]; }
disconnected() { ! connected; }
step "tgtd start" start_tgtd 3260
step "tgtd target + LUN 256MiB" eval "truncate -s 256M /tmp/mc.img && tgt_add_target 1 $IQN /tmp/mc.img"
step "fill the LUN (reads hit data)" dd if=/dev/urandom of=/tmp/mc.img bs=1M count=256 conv=notrunc status=none
for n in ${CONNS_LIST:-1 2 4}; do
  step "attach --connections $n" eval 'bg_start attach-$n "$BIN" attach "iscsi://127.0.0.1:3260/$IQN/1" --device /dev/nbd0 --connections $n --by-path-dir "" && PID=$BG_PID && wait_for 30 connected'
  fio_suite /dev/nbd0 "iscsi-nbd conns=$n" "${FIO_RUNTIME:-5}"
  step "detach" eval '"$BIN" detach /dev/nbd0 && wait_for 20 disconnected && wait_for 20 eval "! alive $PID"'
done
step "tgtd stop" stop_tgtd
cat "$SUMMARY"
exit 0

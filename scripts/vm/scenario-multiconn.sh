#!/bin/bash
# scenario-multiconn.sh - inside the VM: is more than one socket per /dev/nbdN faster? (kernel multi-queue)
#   tgtd LUN -> `iscsi-nbd attach --connections N` for each N in $CONNS_LIST -> fio randread/randwrite 4k
#   qd32 and read 1M qd8 (FIO_RUNTIME s each) -> detach. Numbers land in $VM_RESULTS/summary.txt.
# Run: scripts/vm/run-in-vm.sh -t 400 -r /tmp/vm-mc scripts/vm/scenario-multiconn.sh
#   Then SESSIONS (2) attach processes on nbd0.. of the same LUN, fio on all at once (one session per queue,
#   approximated).
# Knobs (-e VAR=VAL): CONNS_LIST ("1 2 4"), SESSIONS (2; 1 = skip), FIO_RUNTIME (5), FIO_JOBS, ISCSI_NBD.
# vm-apt: tgt fio python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT
ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
BIN=${ISCSI_NBD:-$ROOT/.build/debug/iscsi-nbd}
IQN=iqn.2026-11.test.iscsi-nbd:mc
has_size() { [ "$(cat /sys/block/$1/size 2>/dev/null || echo 0)" != 0 ]; }
connected() { has_size nbd0; }
disconnected() { ! connected; }
step "tgtd start" start_tgtd 3260
step "tgtd target + LUN 256MiB" eval "truncate -s 256M /tmp/mc.img && tgt_add_target 1 $IQN /tmp/mc.img"
step "fill the LUN (reads hit data)" dd if=/dev/urandom of=/tmp/mc.img bs=1M count=256 conv=notrunc status=none
for n in ${CONNS_LIST:-1 2 4}; do
  step "attach --connections $n" eval 'bg_start attach-$n "$BIN" attach "iscsi://127.0.0.1:3260/$IQN/1" --device /dev/nbd0 --connections $n --by-path-dir "" && PID=$BG_PID && wait_for 30 connected'
  fio_suite /dev/nbd0 "iscsi-nbd conns=$n" "${FIO_RUNTIME:-5}"
  step "detach" eval '"$BIN" detach /dev/nbd0 && wait_for 20 disconnected && wait_for 20 eval "! alive $PID"'
done
# One session per queue, approximated: SESSIONS attach processes (each its own iSCSI session, random ISID,
# its own event loop) on nbd0, nbd1, ... of the same LUN, fio on all of them at once with the queue depth
# split between them, IOPS summed. If this is no faster than one session, one session per kernel queue
# inside one process would not be either.
SESSIONS=${SESSIONS:-2}
if [ "$SESSIONS" -gt 1 ]; then
  PIDS=()
  for ((i = 0; i < SESSIONS; i++)); do
    step "attach session $i -> nbd$i" bg_start attach-s$i "$BIN" attach "iscsi://127.0.0.1:3260/$IQN/1" --device /dev/nbd$i --by-path-dir ""
    PIDS+=("$BG_PID")
    step "nbd$i connected" wait_for 30 has_size nbd$i
  done
  for job in ${FIO_JOBS:-randread:4k:32 randwrite:4k:32 read:1M:8}; do
    IFS=: read -r rw bs qd <<<"$job"
    json=$VM_RESULTS/fio-sessions$SESSIONS-$rw-$bs-qd$qd.json
    args=(--ioengine=libaio --direct=1 --rw="$rw" --bs="$bs" --iodepth=$((qd / SESSIONS > 0 ? qd / SESSIONS : 1))
          --time_based --runtime="${FIO_RUNTIME:-5}" --ramp_time=1 --size=100% --randrepeat=0 --norandommap
          --group_reporting --output-format=json --output="$json")
    for ((i = 0; i < SESSIONS; i++)); do args+=(--name="s$i" --filename=/dev/nbd$i); done
    step "fio $SESSIONS sessions $rw $bs qd$qd" fio "${args[@]}"
    fio_line "$json" "iscsi-nbd sessions=$SESSIONS" "$rw $bs qd$qd" >>"$SUMMARY"
    tail -n1 "$SUMMARY"
  done
  for ((i = 0; i < SESSIONS; i++)); do
    step "detach nbd$i" "$BIN" detach /dev/nbd$i
    step "attach $i exited" wait_for 20 eval "! alive ${PIDS[$i]}"
  done
fi
step "tgtd stop" stop_tgtd
cat "$SUMMARY"
exit 0

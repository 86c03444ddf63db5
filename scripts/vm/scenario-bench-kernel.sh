#!/bin/bash
# scenario-bench-kernel.sh - inside the VM: the kernel-device benchmark of issue 6. Against one tgtd LUN
# in the same VM run, fio (libaio, direct=1) on
#   1. open-iscsi's kernel initiator (iscsid + iscsi_tcp -> /dev/sdX),
#   2. iscsi-nbd attach -> /dev/nbd0 (our initiator + the kernel's NBD driver),
#   3. qemu-nbd (libiscsi) + nbd-client -> /dev/nbd1 (the user-space peer to beat),
# and prints the ratios iscsi-nbd / open-iscsi and iscsi-nbd / qemu-nbd per job.
# Run:  scripts/vm/run-in-vm.sh -t 900 -r results/vm-bench scripts/vm/scenario-bench-kernel.sh [LUN_MiB] [FIO_SECONDS] [CONNECTIONS]
# (TCG emulation: absolute numbers are far below bare metal; only the ratios of one run mean anything.)
# Knobs (-e VAR=VAL): ATTACH_ARGS, extra arguments for `iscsi-nbd attach` (e.g. "--poll-us 100");
#   FIO_JOBS, the fio jobs as RW:BS:QD words (default "randread:4k:32 randwrite:4k:32 read:1M:8");
#   PROFILE=SECS, after each timed job one more run of SECS under perf (profile-*.txt in the results).
# vm-apt: open-iscsi tgt qemu-utils qemu-block-extra nbd-client fio libiscsi-bin e2fsprogs python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
SIZE_MB=${1:-512} FIO_RT=${2:-10} CONNS=${3:-1}
BIN=${ISCSI_NBD:-$PWD/.build/debug/iscsi-nbd}
ATTACH_ARGS=${ATTACH_ARGS:-}
trap 'cleanup_bg' EXIT
IQN=iqn.2026-11.org.iscsi-nbd.vm:bench PORT=3260 P=127.0.0.1:3260 IMG=/var/tmp/bench.img

log "kernel $(uname -r); iscsi-nbd: $BIN ${ATTACH_ARGS:+(attach $ATTACH_ARGS)}; LUN ${SIZE_MB} MiB; fio ${FIO_RT} s per job; $CONNS NBD connection(s)"
[ -x "$BIN" ] || { log "no iscsi-nbd binary at $BIN (swift build first)"; exit 2; }
step "create LUN file" truncate -s "${SIZE_MB}M" $IMG
step "start tgtd" start_tgtd $PORT
step "tgtadm target+LUN" tgt_add_target 1 $IQN $IMG
step "start iscsid" start_iscsid

# 1. open-iscsi (kernel initiator)
step "iscsiadm discovery+login" iscsi_login $P $IQN 1
fio_suite "$SD" "open-iscsi" "$FIO_RT"
step "iscsiadm logout" iscsi_logout $P $IQN

# 2. iscsi-nbd attach -> /dev/nbd0
att_up() { grep -qx /dev/nbd0 "$VM_RESULTS/attach.log" 2>/dev/null && nbd_connected /dev/nbd0; }
step "iscsi-nbd attach" eval 'bg_start attach "$BIN" attach "iscsi://$P/$IQN/1" --device /dev/nbd0 --connections $CONNS --by-path-dir "" $ATTACH_ARGS; ATT_PID=$BG_PID; wait_for 60 att_up'
fio_suite /dev/nbd0 "iscsi-nbd" "$FIO_RT"
step "iscsi-nbd detach" eval '"$BIN" detach /dev/nbd0; wait_for 30 eval "! alive $ATT_PID"'

# 3. qemu-nbd + nbd-client -> /dev/nbd1
SOCK=/tmp/qemu-nbd.sock
step "start qemu-nbd" start_qemu_nbd $SOCK "iscsi://$P/$IQN/1"
step "nbd-client attach" nbd_attach $SOCK /dev/nbd1
fio_suite /dev/nbd1 "qemu-nbd" "$FIO_RT"
step "nbd-client -d" nbd_detach /dev/nbd1
step "stop qemu-nbd" bg_stop "$QEMU_NBD_PID"
step "stop iscsid" bg_stop "$ISCSID_PID"
step "stop tgtd" stop_tgtd

log "summary:"; cat "$SUMMARY"
python3 - "$SUMMARY" <<'PY' | tee -a "$SUMMARY"
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s+(\S+ \S+ \S+)\s+IOPS=\s*([\d.]+)\s+BW=\s*([\d.]+) MiB/s\s+clat_mean=\s*([\d.]+)", line)
    if m:
        rows.setdefault(m.group(2), {})[m.group(1)] = (float(m.group(3)), float(m.group(5)))
print(f"{'job':<18} {'iscsi-nbd/open-iscsi':>22} {'iscsi-nbd/qemu-nbd':>20}")
for job, r in rows.items():
    ours = r.get("iscsi-nbd", (0, 0))[0]
    k = r.get("open-iscsi", (0, 0))[0]; q = r.get("qemu-nbd", (0, 0))[0]
    print(f"{job:<18} {ours / k if k else 0:>21.2f}x {ours / q if q else 0:>19.2f}x")
PY
log "OK"

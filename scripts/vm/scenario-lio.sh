#!/bin/bash
# scenario-lio.sh - inside the VM: LIO in-kernel iSCSI target (target_core_mod,
# target_core_file, iscsi_target_mod) with a fileio backstore on tmpfs, LUN 0,
# demo-mode ACLs, portal 127.0.0.1:3261; check it with libiscsi's iscsi-ls /
# iscsi-inq, then qemu-nbd (iscsi:// URL) + nbd-client -> /dev/nbd0 -> ext4
# round trip and fio.
# Run:  scripts/vm/run-in-vm.sh scripts/vm/scenario-lio.sh [configfs|targetcli] [LUN_SIZE_MiB] [FIO_SECONDS]
#   configfs (default): direct configfs writes (lib.sh lio_setup); targetcli: targetcli-fb
# vm-apt: qemu-utils qemu-block-extra nbd-client fio libiscsi-bin e2fsprogs python3 targetcli-fb dbus
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
TOOL=${1:-configfs} SIZE_MB=${2:-1024} FIO_RT=${3:-10}
IQN=iqn.2024-01.test.vm:lio1
PORT=3261
SOCK=/tmp/nbd-lio.sock
DEV=/dev/nbd0
MNT=/mnt/lio
IMG=/tmp/lio.img
trap 'cleanup_bg; [ "$TOOL" = configfs ] && [ -d $LIO/iscsi/$IQN ] && lio_teardown $IQN $PORT' EXIT

log "kernel $(uname -r); LIO configured with $TOOL"
step "create backing file (${SIZE_MB}MiB on tmpfs)" truncate -s "${SIZE_MB}M" $IMG
if [ "$TOOL" = targetcli ]; then
  step "LIO setup via targetcli" lio_setup_targetcli $IQN $IMG "${SIZE_MB}M" $PORT
  targetcli ls / 2>&1 | sed 's/^/  /'
else
  step "LIO setup via configfs" lio_setup $IQN $IMG $((SIZE_MB << 20)) $PORT
  (cd $LIO && find iscsi core -maxdepth 5 \( -name 'lun_*' -o -name '127.0.0.1:*' -o -name disk0 \)) | sed 's/^/  configfs: /'
fi
lsmod | grep -E '^(target_core|iscsi_target)' | sed 's/^/  /'
step "iscsi-ls -s" iscsi-ls -s iscsi://127.0.0.1:$PORT
step "iscsi-inq LUN 0" sh -c "iscsi-inq iscsi://127.0.0.1:$PORT/$IQN/0 | grep -E 'Device Type|Vendor|Product|Revision'"
step "iscsi-readcapacity16" iscsi-readcapacity16 iscsi://127.0.0.1:$PORT/$IQN/0
step "start qemu-nbd on LIO" start_qemu_nbd $SOCK "iscsi://127.0.0.1:$PORT/$IQN/0"
attach() { nbd_attach $SOCK $DEV; }
detach() { nbd_detach $DEV; }
step "nbd-client attach" attach
fs_roundtrip $DEV $MNT lio-nbd detach attach
step "nbd-client -d" detach
step "verify checksums on backing file (loop)" verify_image $IMG $MNT
step "re-attach for fio" attach
fio_suite $DEV "lio+qemu-nbd+nbd" "$FIO_RT"
step "nbd-client -d" detach
step "stop qemu-nbd" bg_stop "$QEMU_NBD_PID"
if [ "$TOOL" = configfs ]; then step "LIO teardown" lio_teardown $IQN $PORT; fi
dmesg | grep -iE 'target|iscsi|lio' | tail -n 15 | sed 's/^/  dmesg: /'
log "summary:"; cat "$SUMMARY"
log "OK"

#!/bin/bash
# scenario-qemu-nbd.sh - inside the VM: tgtd iSCSI target (LUN on tmpfs) ->
# qemu-nbd (libiscsi initiator, iscsi:// URL) -> nbd-client (netlink) ->
# /dev/nbd0 -> mkfs.ext4, mount, write, verify; then fio on /dev/nbd0.
# Run:  scripts/vm/run-in-vm.sh scripts/vm/scenario-qemu-nbd.sh [LUN_SIZE] [FIO_SECONDS]
# vm-apt: tgt qemu-utils qemu-block-extra nbd-client fio libiscsi-bin e2fsprogs python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT

SIZE=${1:-1G} FIO_RT=${2:-10}
IQN=iqn.2024-01.test.vm:tgt1
PORT=3260
SOCK=/tmp/nbd.sock
DEV=/dev/nbd0
MNT=/mnt/nbd0

log "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
step "nbd module present" test -e /sys/module/nbd
step "TCG speed: 32MiB urandom" sh -c 'head -c 32M /dev/urandom > /tmp/rnd'
step "TCG speed: sha256 32MiB" sha256sum /tmp/rnd
rm -f /tmp/rnd
step "create LUN file ($SIZE on tmpfs)" truncate -s "$SIZE" /tmp/lun1.img
step "start tgtd" start_tgtd $PORT
step "tgtadm target+LUN" tgt_add_target 1 $IQN /tmp/lun1.img
step "iscsi-ls" iscsi-ls -s iscsi://127.0.0.1:$PORT
step "iscsi-inq LUN 1" sh -c "iscsi-inq iscsi://127.0.0.1:$PORT/$IQN/1 | grep -E 'Device Type|Vendor|Product'"
step "start qemu-nbd on iscsi:// URL" start_qemu_nbd $SOCK "iscsi://127.0.0.1:$PORT/$IQN/1"
attach() { nbd_attach $SOCK $DEV; }
detach() { nbd_detach $DEV; }
step "nbd-client attach (netlink)" attach
log "$DEV: $(( $(cat /sys/block/nbd0/size) * 512 )) bytes, logical block $(cat /sys/block/nbd0/queue/logical_block_size)"
fs_roundtrip $DEV $MNT nbd detach attach
step "nbd-client -d" detach
# the bytes really are in tgtd's backing file: loop-mount it (read-only)
step "verify checksums on LUN file (loop)" verify_image /tmp/lun1.img $MNT
step "re-attach for fio" attach
fio_suite $DEV "tgtd+qemu-nbd+nbd" "$FIO_RT"
step "nbd-client -d" detach
step "stop qemu-nbd" bg_stop "$QEMU_NBD_PID"
step "stop tgtd" stop_tgtd
log "summary:"; cat "$SUMMARY"
log "OK"

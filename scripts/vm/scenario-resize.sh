#!/bin/bash
# scenario-resize.sh - inside the VM: online resize of /dev/nbdN when the LUN grows.
#   ioctl interface (`attach --kernel-interface ioctl --poll-us 200`, so busy polling runs on the kernel path): tgtd LUN of 64 MiB -> ext4 mounted on /dev/nbd3 ->
#   tgtd stopped, the backing file grown to 128 MiB, tgtd started again -> the session recovers, finds the
#   same LU larger, tells the kernel (NBD_SET_SIZE) -> /dev/nbd3 is 128 MiB while mounted -> resize2fs online
#   -> a file written into the new space -> detach -> e2fsck on the backing file, checksums.
#   netlink interface (the default): the same growth leaves /dev/nbd4 at its size, with a warning that says
#   why (NBD_CMD_RECONFIGURE takes no size) and what to do.
#   the daemon with --kernel-interface ioctl: login gives an ioctl device, the LUN grows to 192 MiB, the device
#   follows, data written at the new end lands in the backing file, logout stops the device, SIGTERM exits 0.
# Run (as root, from the project checkout, after `swift build --build-tests`):
#   scripts/vm/run-in-vm.sh -t 300 -r /tmp/vm-resize scripts/vm/scenario-resize.sh
# vm-apt: tgt e2fsprogs
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT

ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
BIN=${ISCSI_NBD:-$ROOT/.build/debug/iscsi-nbd}
IQN=iqn.2026-12.test.iscsi-nbd:resize
PORT=3262
IMG=/var/tmp/resize.img
MNT=/mnt/resize
mkdir -p "$MNT"
rm -f "$IMG"

sectors() { cat "/sys/block/${1#/dev/}/size" 2>/dev/null || echo 0; }
has_sectors() { [ "$(sectors "$1")" = "$2" ]; }
up() { grep -qx "$1" "$VM_RESULTS/$2.log" 2>/dev/null && [ "$(sectors "$1")" != 0 ]; }
restart_grown() {  # restart_grown MiB : tgtd away, backing file grown, tgtd back with the same target
  stop_tgtd
  truncate -s "${1}M" "$IMG" || return 1
  sleep 1
  start_tgtd $PORT && tgt_add_target 1 $IQN "$IMG"
}
image_ok() {  # the LUN's backing file holds a clean ext4 of 128 MiB (4k blocks) with both files
  local rc
  [ "$(fs_blocks "$IMG")" = 32768 ] || { log "block count $(fs_blocks "$IMG")"; return 1; }
  e2fsck -fn "$IMG" >/dev/null || return 1
  mount -o loop,ro "$IMG" "$MNT" || return 1
  cmp /tmp/before.bin "$MNT/before.bin" && cmp /tmp/after.bin "$MNT/after.bin"; rc=$?
  umount "$MNT"
  return $rc
}
fs_blocks() { dumpe2fs -h "$1" 2>/dev/null | sed -n 's/^Block count: *//p'; }
stop_attach() {  # stop_attach DEV PID : detach, the attach process exits 0
  "$BIN" detach "$1" || return 1
  wait_for 20 eval "! alive $2" || return 1
  wait "$2"
}

step "tgtd start" start_tgtd $PORT
step "LUN 64MiB" eval 'truncate -s 64M "$IMG" && tgt_add_target 1 $IQN "$IMG"'

# ---- ioctl: online resize -----------------------------------------------------------------------
step "attach --kernel-interface ioctl --poll-us 200 /dev/nbd3" eval 'bg_start attach-ioctl "$BIN" attach --kernel-interface ioctl \
  --poll-us 200 --log-level debug --device /dev/nbd3 --by-path-dir "" "iscsi://127.0.0.1:$PORT/$IQN/1"; A1=$BG_PID; wait_for 30 up /dev/nbd3 attach-ioctl'
step "64MiB, set up by ioctl (sysfs: pid, no backend)" eval 'has_sectors /dev/nbd3 131072 && [ -e /sys/block/nbd3/pid ] && [ -z "$(cat /sys/block/nbd3/backend 2>/dev/null)" ]'
step "mkfs.ext4 + mount" eval 'mkfs.ext4 -q -F -b 4096 /dev/nbd3 && mount /dev/nbd3 "$MNT"'
# Set up, not "caught an event": under TCG the target answers in milliseconds, so the adaptive window
# rightly shrinks to nothing here (ServeTests checks the catching on the host).
step "busy polling set up on the kernel path" eval 'grep -q "poll.epollFD=.* busy polling" "$VM_RESULTS/attach-ioctl.log" && ! grep -q "busy polling unavailable" "$VM_RESULTS/attach-ioctl.log"'
step "write 8MiB before" eval 'head -c 8M /dev/urandom > /tmp/before.bin && cp /tmp/before.bin "$MNT/" && sync'
step "grow the LUN to 128MiB (tgtd restart)" restart_grown 128
step "/dev/nbd3 grows to 128MiB while mounted" wait_for 60 has_sectors /dev/nbd3 262144
step "attach log: LUN grew, resized" eval 'grep -q "LUN grew" "$VM_RESULTS/attach-ioctl.log" && grep -q "resized" "$VM_RESULTS/attach-ioctl.log"'
step "resize2fs online" resize2fs /dev/nbd3
step "write 80MiB into the new space" eval 'head -c 80M /dev/urandom > /tmp/after.bin && cp /tmp/after.bin "$MNT/" && sync'
step "read back through the device" eval 'echo 3 > /proc/sys/vm/drop_caches; cmp /tmp/before.bin "$MNT/before.bin" && cmp /tmp/after.bin "$MNT/after.bin"'
step "umount + detach; attach exits 0" eval 'umount "$MNT" && stop_attach /dev/nbd3 "$A1"'
step "nbd3 stopped" eval 'has_sectors /dev/nbd3 0 && [ ! -e /sys/block/nbd3/pid ]'
step "backing file: ext4 of 128MiB, clean, data intact" image_ok

# ---- netlink: the kernel keeps the size, and we say so --------------------------------------------
step "attach (netlink) /dev/nbd4" eval 'bg_start attach-netlink "$BIN" attach --kernel-interface netlink \
  --device /dev/nbd4 --by-path-dir "" "iscsi://127.0.0.1:$PORT/$IQN/1"; A2=$BG_PID; wait_for 30 up /dev/nbd4 attach-netlink'
step "grow the LUN to 160MiB (tgtd restart)" restart_grown 160
step "attach log: LUN grew, cannot resize a netlink device" wait_for 60 grep -q "cannot resize a netlink-configured device" "$VM_RESULTS/attach-netlink.log"
step "/dev/nbd4 keeps 128MiB and serves I/O" eval 'has_sectors /dev/nbd4 262144 && dd if=/dev/nbd4 of=/dev/null bs=1M count=4 iflag=direct status=none'
step "detach nbd4; attach exits 0" stop_attach /dev/nbd4 "$A2"

# ---- the daemon with --kernel-interface ioctl: login, growth, logout --------------------------------
export ISCSI_NBD_CONFIG_DIR=/tmp/resize-conf ISCSI_NBD_CONTROL_SOCKET=/run/iscsi-nbd-resize/control.sock
mkdir -p "$ISCSI_NBD_CONFIG_DIR"
daemon_login() {  # sets DDEV from the daemon's answer
  local out
  out=$("$BIN" -m node -T $IQN -p 127.0.0.1:$PORT --login) || { echo "$out"; return 1; }
  echo "$out"
  DDEV=$(echo "$out" | sed -n 's/^\tLUN [0-9]*: \(\/dev\/nbd[0-9]*\).*/\1/p' | head -1)
  [ -n "$DDEV" ] && [ "$(sectors "$DDEV")" != 0 ]
}
daemon_stop() {
  kill -TERM "$DPID"
  wait_for 30 eval "! alive $DPID" || return 1
  wait "$DPID"
}
step "discovery" "$BIN" -m discovery -t st -p 127.0.0.1:$PORT
step "daemon --kernel-interface ioctl" eval 'bg_start daemon "$BIN" daemon --kernel-interface ioctl --no-automatic \
  --by-path-dir ""; DPID=$BG_PID; wait_for 30 test -S "$ISCSI_NBD_CONTROL_SOCKET"'
step "login through the daemon" daemon_login
step "160MiB, set up by ioctl" eval 'has_sectors "$DDEV" 327680 && [ -e "/sys/block/${DDEV#/dev/}/pid" ] && [ -z "$(cat "/sys/block/${DDEV#/dev/}/backend" 2>/dev/null)" ]'
step "grow the LUN to 192MiB (tgtd restart)" restart_grown 192
step "the daemon's device grows to 192MiB" wait_for 60 has_sectors "$DDEV" 393216
step "4MiB at the new end, direct, read back" eval 'head -c 4M /dev/urandom > /tmp/tail.bin &&
  dd if=/tmp/tail.bin of="$DDEV" bs=1M seek=188 oflag=direct status=none &&
  cmp /tmp/tail.bin <(dd if="$IMG" bs=1M skip=188 count=4 status=none)'
step "logout: the device stops" eval '"$BIN" -m node -T $IQN -p 127.0.0.1:$PORT --logout && wait_for 10 has_sectors "$DDEV" 0'
step "daemon SIGTERM, exit 0" daemon_stop
step "tgtd stop" stop_tgtd
rm -f "$IMG"
log "scenario-resize: all steps passed"
exit 0

#!/bin/bash
# scenario-resize.sh - inside the VM: online resize of /dev/nbdN when the LUN grows, fail-stop when it shrinks.
#   ioctl interface (`attach --kernel-interface ioctl --poll-us 200`, so busy polling runs on the kernel path): tgtd LUN of 64 MiB -> ext4 mounted on /dev/nbd3 ->
#   tgtd stopped, the backing file grown to 128 MiB, tgtd started again -> the session recovers, finds the
#   same LU larger, tells the kernel (NBD_SET_SIZE) -> /dev/nbd3 is 128 MiB while mounted -> resize2fs online
#   -> a file written into the new space -> detach -> e2fsck on the backing file, checksums.
#   netlink interface (the default): the same ext4 mounted on /dev/nbd4, the LUN grows to 160 MiB, the device
#   follows while mounted (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES; dmesg's capacity change), resize2fs
#   online, 48 MiB into the new space, read back; attach killed (-9) under the mount, the LUN grown to 176 MiB,
#   a new attach takes the device back and grows it in the same RECONFIGURE; resize2fs, e2fsck clean.
#   a LUN that shrinks: a re-attach to a smaller LUN is refused before the device gets a socket (the device
#   keeps its size, its I/O fails after the dead-connection timeout); a shrink found when a live session logs
#   in again (tgtd restart) fails the identity check (fail-stop); the kernel never sees the smaller size.
#   (A shrink announced by 2A/09 without a re-login is not reachable with tgtd; the unit tests cover it.)
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
restart_grown() {  # restart_grown MiB : tgtd away, backing file grown (or shrunk), tgtd back with the same target
  stop_tgtd
  truncate -s "${1}M" "$IMG" || return 1
  sleep 1
  start_tgtd $PORT && tgt_add_target 1 $IQN "$IMG"
}
image_ok() {  # image_ok [BLOCKS]: the LUN's backing file holds a clean ext4 of BLOCKS 4k blocks (default 32768:
  local rc      # 128 MiB) with the first two files
  [ "$(fs_blocks "$IMG")" = "${1:-32768}" ] || { log "block count $(fs_blocks "$IMG")"; return 1; }
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

# ---- netlink: online resize while mounted (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES) ---------------
attach_netlink() {  # attach_netlink LOGNAME : /dev/nbd4 over netlink, dead-connection timeout $DEAD s; sets A
  bg_start "$1" "$BIN" attach --kernel-interface netlink --dead-connection-timeout $DEAD --device /dev/nbd4 \
    --by-path-dir "" "iscsi://127.0.0.1:$PORT/$IQN/1" && A=$BG_PID
}
exited_nonzero() {  # exited_nonzero PID : the process ended, with a failure
  wait_for 60 eval "! alive $1" || return 1
  wait "$1"; [ $? != 0 ]
}
never_shrunk() {  # never_shrunk : dmesg shows no capacity change of /dev/nbd4 to a smaller size but 0 (disconnect)
  dmesg | sed -n 's/.*nbd4: detected capacity change from \([0-9]*\) to \([0-9]*\).*/\1 \2/p' |
    awk '$2 != 0 && $2 < $1 { print "shrunk: " $0; bad = 1 } END { exit bad }'
}
DEAD=20
step "attach (netlink) /dev/nbd4" eval 'attach_netlink attach-netlink && wait_for 30 up /dev/nbd4 attach-netlink'
step "max_sectors_kb set from the LUN" eval 'grep -E "queue limits" "$VM_RESULTS/attach-netlink.log" | tail -1 &&
  [ "$(cat /sys/block/nbd4/queue/max_sectors_kb)" -gt 128 ]'
step "mount the 128MiB ext4" mount /dev/nbd4 "$MNT"
step "grow the LUN to 160MiB (tgtd restart)" restart_grown 160
step "/dev/nbd4 grows to 160MiB while mounted" wait_for 60 has_sectors /dev/nbd4 327680
step "attach log: LUN grew, resized over netlink" eval 'grep -q "LUN grew" "$VM_RESULTS/attach-netlink.log" &&
  grep "resized" "$VM_RESULTS/attach-netlink.log" | grep -q "interface=netlink"'
step "dmesg: nbd4 detected capacity change from 262144 to 327680" eval 'dmesg | grep "nbd4: detected capacity change from 262144 to 327680"'
step "resize2fs online" resize2fs /dev/nbd4
# The ext4 of 128 MiB held 88 MiB: 48 MiB more must go to the new space.
step "write 48MiB (into the new space)" eval 'head -c 48M /dev/urandom > /tmp/grown.bin && cp /tmp/grown.bin "$MNT/" && sync'
step "read back through the device" eval 'echo 3 > /proc/sys/vm/drop_caches; cmp /tmp/before.bin "$MNT/before.bin" &&
  cmp /tmp/after.bin "$MNT/after.bin" && cmp /tmp/grown.bin "$MNT/grown.bin"'
# A new attach of the same LU takes the device back (NBD_CMD_RECONFIGURE): when the LUN grew meanwhile, the
# same message carries the new size.
step "kill -9 attach (mounted); the LUN grows to 176MiB (tgtd restart)" eval 'kill -KILL $A; wait $A 2>/dev/null; restart_grown 176'
step "attach again: re-adopts /dev/nbd4 and grows it in the same RECONFIGURE" eval 'attach_netlink attach-readopt &&
  wait_for 30 grep -q "re-adopted /dev/nbd4" "$VM_RESULTS/attach-readopt.log" && has_sectors /dev/nbd4 360448 &&
  grep "reconnected" "$VM_RESULTS/attach-readopt.log" | grep -q "grown=true"'
step "resize2fs online again" resize2fs /dev/nbd4
step "write 16MiB more, read all back" eval 'head -c 16M /dev/urandom > /tmp/grown2.bin && cp /tmp/grown2.bin "$MNT/" && sync &&
  echo 3 > /proc/sys/vm/drop_caches && cmp /tmp/grown.bin "$MNT/grown.bin" && cmp /tmp/grown2.bin "$MNT/grown2.bin"'
step "umount + detach; attach exits 0" eval 'umount "$MNT" && stop_attach /dev/nbd4 "$A"'
step "backing file: ext4 of 176MiB, clean, data intact" eval 'image_ok 45056 && mount -o loop,ro "$IMG" "$MNT" &&
  cmp /tmp/grown.bin "$MNT/grown.bin" && cmp /tmp/grown2.bin "$MNT/grown2.bin"; rc=$?; umount "$MNT"; [ $rc = 0 ]'

# ---- a LUN that shrinks: fail-stop, the device is never shrunk under the file system ---------------------
step "attach (netlink), mount; kill -9 attach; the LUN shrinks to 160MiB (tgtd restart)" eval 'attach_netlink attach-shrink1 &&
  wait_for 30 up /dev/nbd4 attach-shrink1 && mount /dev/nbd4 "$MNT" && kill -KILL $A && { wait $A 2>/dev/null; restart_grown 160; }'
step "attach again: refused before the device gets a socket, exits non-zero" eval 'attach_netlink attach-shrink2 && exited_nonzero $A &&
  grep -q "is 184549376 bytes but the LUN is now 167772160: it shrank" "$VM_RESULTS/attach-shrink2.log"'
step "/dev/nbd4 keeps 176MiB" eval 'has_sectors /dev/nbd4 360448 && never_shrunk'
step "its I/O fails once the dead-connection timeout passes (no hang)" eval 'timeout $((DEAD + 30)) dd if=/dev/nbd4 of=/dev/null bs=4k count=1 iflag=direct status=none;
  rc=$?; [ $rc != 0 ] && [ $rc != 124 ]'
step "umount + detach" eval '{ umount "$MNT" || umount -l "$MNT"; }; "$BIN" detach /dev/nbd4; wait_for 20 has_sectors /dev/nbd4 0'
step "attach (netlink) at 160MiB" eval 'attach_netlink attach-shrink3 && wait_for 30 up /dev/nbd4 attach-shrink3 && has_sectors /dev/nbd4 327680'
step "the LUN shrinks to 144MiB under the live session (tgtd restart)" restart_grown 144
step "the session fail-stops on the identity check, attach exits non-zero" eval 'exited_nonzero $A &&
  grep -q "capacity shrank from 327680 to 294912 blocks" "$VM_RESULTS/attach-shrink3.log"'
step "/dev/nbd4 was never shrunk" never_shrunk
rm -f /tmp/grown.bin /tmp/grown2.bin
step "the LUN back to 160MiB (tgtd restart)" restart_grown 160

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

#!/bin/bash
# scenario-netlink.sh - inside the VM: our NBDKernel netlink code against the real nbd driver.
#   Part 1: NBD server (nbdkit memory, on a unix socket) -> nbd-netlink-check connect (handshake + NBD_CMD_CONNECT,
#   2 connections) -> /dev/nbdN: size, status, EBUSY on a second connect, mkfs.ext4, mount, write,
#   umount, disconnect, re-attach on the same index, verify, disconnect, status = disconnected.
#   Part 2: nbdkit file; connect with a dead-connection timeout; kill -9 the server; the link-dead
#   multicast arrives (monitor); restart; NBD_CMD_RECONFIGURE with new sockets; data intact.
# Run (as root, from the project checkout, after `swift build --build-tests`):
#   scripts/vm/run-in-vm.sh -t 300 -r /tmp/vm-netlink scripts/vm/scenario-netlink.sh [SIZE_MiB]
# Knobs (-e VAR=VAL): NBD_NETLINK_CHECK (tool path, default .build/debug/nbd-netlink-check),
#   NBD_CONNECTIONS (default 2), FS_BIG_MB (default 32).
# To test another server, replace start_server (it must serve the default export on $SOCK).
# vm-apt: nbdkit e2fsprogs python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT

ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
TOOL=${NBD_NETLINK_CHECK:-$ROOT/.build/debug/nbd-netlink-check}
SIZE_MIB=${1:-256}
CONNS=${NBD_CONNECTIONS:-2}
SOCK=/tmp/nbd.sock
MNT=/mnt/nbd
IDX=

start_server() {  # nbdkit's memory plugin: a sparse RAM disk, multi-conn safe
  rm -f "$SOCK"
  bg_start nbdkit nbdkit -f -U "$SOCK" memory "${SIZE_MIB}M"
  SERVER_PID=$BG_PID
  wait_for 20 test -S "$SOCK"
}
sectors() { cat "/sys/block/nbd$1/size" 2>/dev/null || echo 0; }
BACKEND=scenario-netlink
attach() {  # attach [INDEX [EXTRA ARGS]] : sets IDX
  local out
  out=$("$TOOL" connect --unix "$SOCK" --connections "$CONNS" --timeout 30 --backend "$BACKEND" ${1:+--index "$1"} "${@:2}") || return 1
  IDX=$out
  log "attached /dev/nbd$IDX"
  wait_for 10 sh -c "[ \"\$(cat /sys/block/nbd$IDX/size)\" != 0 ]"
}
detach() {
  "$TOOL" disconnect "$IDX" &&
  wait_for 10 sh -c "[ \"\$(cat /sys/block/nbd$IDX/size)\" = 0 ]"
}
reattach() { attach "$IDX"; }
expect_fail() {  # expect_fail FRAGMENT CMD... : CMD must fail and its stderr contain FRAGMENT
  local frag=$1 err rc
  shift
  err=$("$@" 2>&1 >/dev/null); rc=$?
  log "  -> rc=$rc: $err"
  [ $rc != 0 ] && [[ $err == *"$frag"* ]]
}
status_is() {  # status_is INDEX connected|disconnected
  local line
  line=$("$TOOL" status "$1") || return 1
  log "  status: $line"
  [ "$line" = "nbd$1 $2" ]
}
# Raw replies of the real kernel, kept as fixtures for NBDKernelTests (python: no dependency on our codec).
capture() {
  python3 - "$1" > "$VM_RESULTS/captured-$2.txt" <<'PY'
import socket, struct, sys
def req(s, typ, cmd, ver, attrs, seq):
    body = struct.pack("=BBH", cmd, ver, 0) + attrs
    s.send(struct.pack("=IHHII", 16 + len(body), typ, 1 | 4, seq, 0) + body)
    out = []
    while True:
        d = s.recv(65536); out.append(d.hex())
        if struct.unpack_from("=H", d, 4)[0] == 2: return out
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16); s.bind((0, 0))
fam = req(s, 0x10, 3, 2, struct.pack("=HH", 8, 2) + b"nbd\0", 100)
print("getfamily", *fam)
d, off, fid = bytes.fromhex(fam[0]), 20, None
while off + 4 <= len(d):   # find CTRL_ATTR_FAMILY_ID (1) among the attributes
    ln, ty = struct.unpack_from("=HH", d, off)
    if ln < 4: break
    if ty & 0x3fff == 1: fid = struct.unpack_from("=H", d, off + 4)[0]
    off += (ln + 3) & ~3
print("status", *req(s, fid, 5, 1, struct.pack("=HHI", 8, 1, int(sys.argv[1])), 101))
print("status-all", *req(s, fid, 5, 1, b"", 102))
PY
}

log "kernel $(uname -r); tool $TOOL"
step "tool is built" test -x "$TOOL"
step "nbd module loaded" test -e /sys/module/nbd
step "family (CTRL_CMD_GETFAMILY nbd)" "$TOOL" family
step "status before: nbd0 disconnected" status_is 0 disconnected
step "start nbdkit memory ${SIZE_MIB}M" start_server
step "connect ($CONNS connections)" attach
step "size is ${SIZE_MIB} MiB" test "$(sectors "$IDX")" = $((SIZE_MIB * 2048))
log "backend: $(cat /sys/block/nbd$IDX/backend 2>/dev/null), pid: $(cat /sys/block/nbd$IDX/pid 2>/dev/null)"
step "backend identifier" grep -qx scenario-netlink "/sys/block/nbd$IDX/backend"
step "status: connected" status_is "$IDX" connected
step "capture raw replies" capture "$IDX" connected
step "second connect on the same index: EBUSY" expect_fail "in use" \
  "$TOOL" connect --unix "$SOCK" --index "$IDX"
step "bad block size refused before sending" expect_fail "power of two" \
  "$TOOL" connect --unix "$SOCK" --block-size 1000
step "disconnect of a non-existent device fails" expect_fail "NBD_CMD_DISCONNECT nbd999" "$TOOL" disconnect 999
fs_roundtrip "/dev/nbd$IDX" "$MNT" nbd detach reattach
step "disconnect" detach
step "status: disconnected" status_is "$IDX" disconnected
step "stop nbdkit" bg_stop "$SERVER_PID"

# ---- a dead server: NBD_CMD_LINK_DEAD multicast, then NBD_CMD_RECONFIGURE with fresh sockets ----
start_file_server() {  # nbdkit file plugin: the data survives a server restart
  rm -f "$SOCK"
  bg_start nbdkit-file nbdkit -f -U "$SOCK" file /tmp/disk.img
  SERVER_PID=$BG_PID
  wait_for 20 test -S "$SOCK"
}
kill_server() { kill -KILL "$SERVER_PID" && wait "$SERVER_PID" 2>/dev/null; return 0; }
reconfigure() { "$TOOL" reconfigure "$IDX" --unix "$SOCK" --connections "$CONNS" --backend "$BACKEND"; }
BACKEND=scenario-netlink-file
step "create 64 MiB disk file" truncate -s 64M /tmp/disk.img
step "start nbdkit file" start_file_server
bg_start monitor "$TOOL" monitor --timeout 120
MONITOR_PID=$BG_PID
step "monitor joined nbd_mc_group" wait_for 10 grep -q monitoring "$VM_RESULTS/monitor.log"
step "connect with dead-conn timeout 60 s" attach "" --dead-timeout 60
step "write 1 MiB (O_DIRECT)" sh -c "head -c 1M /dev/urandom > /tmp/pat1 && dd if=/tmp/pat1 of=/dev/nbd$IDX bs=1M oflag=direct status=none"
step "kill -9 the server" kill_server
step "NBD_CMD_LINK_DEAD received" wait_for 15 grep -q "^link-dead $IDX\$" "$VM_RESULTS/monitor.log"
log "monitor: $(tr '\n' ' ' < "$VM_RESULTS/monitor.log")"
step "status: still connected (waiting for reconfigure)" status_is "$IDX" connected
step "restart nbdkit file" start_file_server
step "reconfigure with $CONNS new sockets" reconfigure
step "read back 1 MiB (O_DIRECT)" sh -c "dd if=/dev/nbd$IDX of=/tmp/back1 bs=1M count=1 iflag=direct status=none && cmp /tmp/pat1 /tmp/back1"
step "write + read after reconfigure" sh -c "head -c 1M /dev/urandom > /tmp/pat2 && dd if=/tmp/pat2 of=/dev/nbd$IDX bs=1M seek=1 oflag=direct status=none && dd if=/dev/nbd$IDX of=/tmp/back2 bs=1M skip=1 count=1 iflag=direct status=none && cmp /tmp/pat2 /tmp/back2"
step "data is in the server's file" sh -c "head -c 1M /tmp/disk.img | cmp - /tmp/pat1"
step "disconnect" detach
step "status: disconnected" status_is "$IDX" disconnected
step "stop monitor, nbdkit" sh -c "kill $MONITOR_PID; true"
bg_stop "$SERVER_PID"
log "timings:"; cat "$TIMINGS"
log "OK"

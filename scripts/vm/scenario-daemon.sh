#!/bin/bash
# scenario-daemon.sh - inside the VM: the iscsi-nbd daemon and /dev/nbdN end to end.
#   tgtd: discovery -> node.startup=automatic -> daemon start logs in by itself -> /dev/nbd0 + by-path link
#   -> -m session -P 3 -> -m session -s and /metrics after a 1 MiB direct write -> ext4 round trip through logout + login (by-path name) -> fio libaio direct verify
#   -> fio numbers (FIO_RUNTIME > 0) -> logout while fio runs (clean errors, no hang) -> daemon SIGTERM while
#   ext4 is mounted: the device in use stays, the next daemon re-adopts it -> SIGTERM idle: detached.
#   LIO (configfs, LUN 0): manual login through a new daemon -> ext4 round trip through logout + login.
#   attach/detach without the daemon (chosen index, by-path link, O_DIRECT data lands in the LUN file).
# Run (as root, from the project checkout, after `swift build --build-tests`):
#   scripts/vm/run-in-vm.sh -t 420 -r /tmp/vm-daemon scripts/vm/scenario-daemon.sh
# Knobs (-e VAR=VAL): ISCSI_NBD (binary, default .build/debug/iscsi-nbd), SIZE_MB (LUN size, 256),
#   FS_BIG_MB (8), FIO_RUNTIME (seconds per fio numbers job; 0 = no numbers, the CI default), NBD_CONNECTIONS (daemon --connections, 1).
# vm-apt: tgt fio e2fsprogs python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
trap cleanup_bg EXIT

ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
BIN=${ISCSI_NBD:-$ROOT/.build/debug/iscsi-nbd}
SIZE_MB=${SIZE_MB:-256}
export FS_BIG_MB=${FS_BIG_MB:-8}
FIO_RUNTIME=${FIO_RUNTIME:-0}
CONNS=${NBD_CONNECTIONS:-1}
export ISCSI_NBD_CONFIG_DIR=/tmp/iscsi-conf
export ISCSI_NBD_CONTROL_SOCKET=/run/iscsi-nbd/control.sock
METRICS_SOCKET=/run/iscsi-nbd/metrics.sock
T_IQN=iqn.2026-11.test.iscsi-nbd:tgtd
L_IQN=iqn.2026-11.test.iscsi-nbd:lio
T_PORT=3260
L_PORT=3261
T_LINK=/dev/disk/by-path/ip-127.0.0.1:$T_PORT-iscsi-$T_IQN-lun-1
L_LINK=/dev/disk/by-path/ip-127.0.0.1:$L_PORT-iscsi-$L_IQN-lun-0
MNT=/mnt/iscsi
mkdir -p "$ISCSI_NBD_CONFIG_DIR" "$MNT"
log "binary: $BIN ($(stat -c %s "$BIN") bytes), kernel $(uname -r)"

sectors() { cat "/sys/block/${1#/dev/}/size" 2>/dev/null || echo 0; }
connected() { [ "$(sectors "$1")" != 0 ]; }
disconnected() { [ "$(sectors "$1")" = 0 ]; }
linked() { [ -L "$1" ] && connected "$(readlink -f "$1")"; }
gone() { [ ! -e "$1" ]; }

start_daemon() {  # start_daemon LOGNAME [ARGS]
  bg_start "$1" "$BIN" daemon --connections "$CONNS" "${@:2}"
  DAEMON_PID=$BG_PID
  wait_for 30 test -S "$ISCSI_NBD_CONTROL_SOCKET"
}
# The socket answers only after automatic logins finished or went to background retry (READY=1 point).
daemon_answers() { "$BIN" -m session >/dev/null 2>&1; [ $? != 1 ]; }
stop_daemon() {  # SIGTERM; must flush, detach, log out and exit 0 within 30 s
  kill -TERM "$DAEMON_PID"
  local end=$(( ${EPOCHREALTIME/./} + 30000000 ))
  while alive "$DAEMON_PID" && [ "${EPOCHREALTIME/./}" -lt "$end" ]; do sleep 0.1; done
  alive "$DAEMON_PID" && { log "daemon still alive 30 s after SIGTERM"; return 1; }
  wait "$DAEMON_PID"; local rc=$?
  log "daemon exited rc=$rc"
  [ $rc = 0 ]
}
login() {  # login IQN PORT : prints the daemon's answer, sets DEV
  local out
  out=$("$BIN" -m node -T "$1" -p "127.0.0.1:$2" --login) || { echo "$out"; return 1; }
  echo "$out"
  DEV=$(echo "$out" | sed -n 's/^\tLUN [0-9]*: \(\/dev\/nbd[0-9]*\).*/\1/p' | head -1)
  [ -n "$DEV" ] && connected "$DEV"
}
logout() { "$BIN" -m node -T "$1" -p "127.0.0.1:$2" --logout; }
t_logout() { logout $T_IQN $T_PORT && wait_for 10 gone "$T_LINK" && disconnected "$DEV"; }
t_login() { login $T_IQN $T_PORT && wait_for 10 linked "$T_LINK"; }
l_logout() { logout $L_IQN $L_PORT && wait_for 10 gone "$L_LINK"; }
l_login() { login $L_IQN $L_PORT && wait_for 10 linked "$L_LINK"; }
stat_delta() {  # stat_delta NAME : the counter's growth between stats-before.txt and stats-after.txt
  local a b
  a=$(awk -F': ' -v k="$1" '$1 == "\t" k { print $2 }' "$VM_RESULTS/stats-before.txt")
  b=$(awk -F': ' -v k="$1" '$1 == "\t" k { print $2 }' "$VM_RESULTS/stats-after.txt")
  echo $(( b - a ))
}
scrape() {  # GET /metrics on the daemon's metrics socket
  python3 -c 'import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"GET /metrics HTTP/1.1\r\nHost: vm\r\n\r\n")
d=b""
while True:
    c=s.recv(65536)
    if not c: break
    d+=c
sys.stdout.write(d.decode())' "$METRICS_SOCKET"
}
t_stats() {  # -m session -s (iscsiadm --stats) after a known workload: one 1 MiB O_DIRECT write to the device
  "$BIN" -m session -r 1 -s > "$VM_RESULTS/stats-before.txt" || return 1
  head -c 1048576 /dev/urandom > /tmp/one-mib
  dd if=/tmp/one-mib of="$DEV" bs=1M count=1 oflag=direct status=none || return 1
  "$BIN" -m session -r 1 -s > "$VM_RESULTS/stats-after.txt" || return 1
  cat "$VM_RESULTS/stats-after.txt"
  local tx cmds dataout r2t
  tx=$(stat_delta txdata_octets) cmds=$(stat_delta scsicmd_pdus) dataout=$(stat_delta dataout_pdus) r2t=$(stat_delta r2t_pdus)
  log "1 MiB write: txdata_octets +$tx, scsicmd_pdus +$cmds, dataout_pdus +$dataout, r2t_pdus +$r2t"
  # Every byte once; with tgtd's FirstBurstLength 64 KiB the rest of each command is asked for by R2T.
  [ "$tx" = 1048576 ] && [ "$cmds" -ge 1 ] && [ "$dataout" -ge 1 ] && [ "$r2t" -ge 1 ] || return 1
  grep -q "^Stats for session \[sid: 1, target: $T_IQN, portal: 127.0.0.1,$T_PORT\]" "$VM_RESULTS/stats-after.txt" || return 1
  "$BIN" -m session -P 1 | tee "$VM_RESULTS/session-P1.txt" | grep -q "($DEV): LOGGED_IN, last minute: [0-9]* requests, p50 " || return 1
  scrape > "$VM_RESULTS/metrics.txt" || return 1
  grep -q "^iscsi_nbd_written_bytes_total{.*device=\"$DEV\".*} [1-9]" "$VM_RESULTS/metrics.txt" &&
    grep -q '^iscsi_nbd_session_state{.*state="LOGGED_IN".*} 1' "$VM_RESULTS/metrics.txt" &&
    [ "$(stat -c %a "$METRICS_SOCKET")" = 600 ]
}
session_shows() {  # -m session -P 3 has the device, the link and the timeouts
  "$BIN" -m session -P 3 > "$VM_RESULTS/session-P3.txt" || return 1
  cat "$VM_RESULTS/session-P3.txt"
  grep -q "Attached nbd disk ${DEV#/dev/}" "$VM_RESULTS/session-P3.txt" &&
  grep -q "By-path: $T_LINK" "$VM_RESULTS/session-P3.txt" &&
  grep -q "replacement_timeout): 120" "$VM_RESULTS/session-P3.txt" &&
  grep -q "MaxBurstLength" "$VM_RESULTS/session-P3.txt" &&
  grep -q "^iscsi-nbd ip-127.0.0.1:$T_PORT-iscsi-$T_IQN-lun-1 " "/sys/block/${DEV#/dev/}/backend" &&
  # One kernel hardware queue per NBD connection (the driver sizes the tag set from its sockets).
  [ "$(ls "/sys/block/${DEV#/dev/}/mq" | wc -l)" = "$CONNS" ]
}
session_state() { "$BIN" -m session -P 1 2>/dev/null | grep -q "iSCSI Session State: $1"; }
# t_recover: the target restarts under a mounted file system while a write is pending; the session recovers
# (-m session: FAILED, then LOGGED_IN), the device stays the same /dev/nbdN, the write completes, data intact.
t_recover() {
  local dev w rc
  dev=$(readlink -f "$T_LINK")
  mount "$T_LINK" "$MNT" || return 1
  head -c 4M /dev/urandom > /tmp/a.bin && cp /tmp/a.bin "$MNT/a.bin" && sync || return 1
  stop_tgtd
  (cp /tmp/a.bin "$MNT/b.bin" && sync) & w=$!
  wait_for 20 session_state FAILED || return 1
  sleep 1
  start_tgtd $T_PORT && tgt_add_target 1 $T_IQN /tmp/tgt.img || return 1
  wait_for 60 session_state LOGGED_IN || return 1
  wait $w || { log "write during the outage failed"; return 1; }
  [ "$(readlink -f "$T_LINK")" = "$dev" ] || { log "device changed"; return 1; }
  umount "$MNT" && mount -o ro "$T_LINK" "$MNT" && cmp /tmp/a.bin "$MNT/a.bin" && cmp /tmp/a.bin "$MNT/b.bin"; rc=$?
  umount "$MNT"
  return $rc
}
# t_kill_loop: tgtd is killed with SIGKILL and restarted twice while fio verifies on /dev/nbdN (libaio, direct,
# crc32c): the session recovers underneath the kernel device each time, fio ends with 0 errors.
t_kill_loop() {
  local fpid i
  fio --name=killverify --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
      --size=8M --rate_iops=400 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
      --output="$VM_RESULTS/fio-killverify.txt" >/dev/null 2>&1 & fpid=$!
  for i in 1 2; do
    sleep 3
    kill -KILL "$TGTD_PID"; wait "$TGTD_PID" 2>/dev/null
    log "tgtd killed ($i)"
    sleep 1
    start_tgtd $T_PORT && tgt_add_target 1 $T_IQN /tmp/tgt.img || return 1
    wait_for 60 session_state LOGGED_IN || return 1
  done
  wait $fpid || { log "fio failed across the kills"; cat "$VM_RESULTS/fio-killverify.txt"; return 1; }
  grep -q "err= 0" "$VM_RESULTS/fio-killverify.txt"
}
no_sessions() { "$BIN" -m session; [ $? = 21 ]; }
fio_verify() {  # fio_verify DEV SIZE : write + read back with checksums, libaio, O_DIRECT
  fio --name=verify --filename="$1" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
      --size="$2" --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
      --output="$VM_RESULTS/fio-verify.txt"
}
# fio_interrupted LABEL ACTION... : fio runs on $DEV, ACTION happens, fio must end (with errors) within 30 s
fio_interrupted() {
  local label=$1 fpid t0 rc; shift
  setsid fio --name="$label" --filename="$DEV" --ioengine=libaio --direct=1 --rw=randrw --bs=4k --iodepth=16 \
      --time_based --runtime=120 --size=100% --output="$VM_RESULTS/fio-$label.txt" >/dev/null 2>&1 &
  fpid=$!
  sleep 3
  alive $fpid || { log "fio died before $label"; return 1; }
  t0=${EPOCHREALTIME/./}
  "$@" || { log "$label action failed"; kill -KILL $fpid; return 1; }
  local end=$(( ${EPOCHREALTIME/./} + 30000000 ))
  while alive $fpid && [ "${EPOCHREALTIME/./}" -lt "$end" ]; do sleep 0.1; done
  if alive $fpid; then log "fio still running 30 s after $label: HANG"; kill -KILL $fpid; return 1; fi
  wait $fpid; rc=$?
  log "fio ended $(_secs $(( ${EPOCHREALTIME/./} - t0 )))s after $label, rc=$rc"
  grep -m3 -i "error\|err=" "$VM_RESULTS/fio-$label.txt"
  [ $rc != 0 ]  # I/O errors, not silence
}

# ---- tgtd, automatic login at daemon start -----------------------------------------------------
step "tgtd start" start_tgtd $T_PORT
step "tgtd target + LUN ${SIZE_MB}MiB" eval "truncate -s ${SIZE_MB}M /tmp/tgt.img && tgt_add_target 1 $T_IQN /tmp/tgt.img"
step "discovery (sendtargets)" "$BIN" -m discovery -t st -p 127.0.0.1:$T_PORT
step "node.startup = automatic" "$BIN" -m node -T $T_IQN -p 127.0.0.1:$T_PORT --op update -n node.startup -v automatic
step "no daemon: -m session exits 21" no_sessions
step "daemon start (automatic login)" start_daemon daemon --metrics-socket "$METRICS_SOCKET"
step "daemon answers" wait_for 30 daemon_answers
step "by-path link appears" wait_for 20 linked "$T_LINK"
DEV=$(readlink -f "$T_LINK")
log "automatic login attached $DEV"
step "-m session -P 3" session_shows
step "-m session -s, -P 1 health and /metrics after a 1 MiB write" t_stats
step "second login: already present" eval "! $BIN -m node -T $T_IQN -p 127.0.0.1:$T_PORT --login"
fs_roundtrip "$T_LINK" "$MNT" "tgtd" t_logout t_login
cp "$VM_RESULTS/sums.txt" "$VM_RESULTS/sums-tgtd.txt"
step "target restart under a mounted fs: recovery" t_recover
DEV=$(readlink -f "$T_LINK")
step "tgtd fio verify 4MiB (libaio, direct, crc32c)" fio_verify "$DEV" 4M
step "kill -9 tgtd twice during fio verify: 0 errors" t_kill_loop
[ "$FIO_RUNTIME" -gt 0 ] && fio_suite "$DEV" "tgtd-iscsi-nbd" "$FIO_RUNTIME"
step "logout while fio runs" fio_interrupted logout t_logout
step "no sessions after logout" no_sessions
step "login again" t_login
# t_term_in_use: SIGTERM under a mounted file system (a restart by hand, not a shutdown of the machine): the
# daemon exits without tearing the device down; the next one takes it back; the file system works on.
# (I/O in flight across such a restart: scenario-crash.sh and the systemd guest's life job.)
t_term_in_use() {
  mkfs.ext4 -q -F "$DEV" && mount "$DEV" "$MNT" && head -c 2M /dev/urandom > "$MNT/before" && sync || return 1
  stop_daemon || return 1
  grep "in use" "$VM_RESULTS/daemon.log" | tail -1
  connected "$DEV" || { log "$DEV was torn down under its mount"; return 1; }
  start_daemon daemon-again && wait_for 60 grep -q "re-adopted $DEV" "$VM_RESULTS/daemon-again.log" || return 1
  head -c 2M /dev/urandom > /tmp/after && cp /tmp/after "$MNT/after" && sync && umount "$MNT" &&
    mount -o ro "$DEV" "$MNT" && cmp /tmp/after "$MNT/after" && umount "$MNT"
}
step "SIGTERM under a mounted fs: the device stays, the next daemon re-adopts it" t_term_in_use
step "SIGTERM idle: detached" stop_daemon
step "device gone after SIGTERM" wait_for 10 gone "$T_LINK"
# ---- LIO (kernel target, LUN 0), manual login ----------------------------------------------------
step "LIO setup (configfs)" eval "truncate -s ${SIZE_MB}M /tmp/lio.img && lio_setup $L_IQN /tmp/lio.img $((SIZE_MB << 20)) $L_PORT"
step "discovery LIO" "$BIN" -m discovery -t st -p 127.0.0.1:$L_PORT
step "daemon start (no automatic)" start_daemon daemon2 --no-automatic
step "daemon answers" wait_for 30 daemon_answers
step "LIO login" l_login
fs_roundtrip "$L_LINK" "$MNT" "LIO" l_logout l_login
DEV=$(readlink -f "$L_LINK")
[ "$FIO_RUNTIME" -gt 0 ] && fio_suite "$DEV" "lio-iscsi-nbd" "$FIO_RUNTIME"
step "LIO logout" l_logout
step "daemon stop (idle)" stop_daemon
step "LIO teardown" lio_teardown $L_IQN $L_PORT

# ---- attach / detach without the daemon ----------------------------------------------------------
attach_up() { [ -n "$(cat "$VM_RESULTS/attach.log" 2>/dev/null | grep -x /dev/nbd5)" ] && connected /dev/nbd5; }
step "attach (foreground, --device /dev/nbd5)" eval 'bg_start attach "$BIN" attach "iscsi://127.0.0.1:$T_PORT/$T_IQN/1" --device /dev/nbd5; ATTACH_PID=$BG_PID; wait_for 30 attach_up'
step "attach by-path link" wait_for 10 linked "$T_LINK"
step "attached: write 4MiB direct, read back" eval 'head -c 4M /dev/urandom > /tmp/att.bin && dd if=/tmp/att.bin of=/dev/nbd5 bs=1M oflag=direct status=none && cmp -n 4194304 /tmp/att.bin $T_LINK' 
step "detach /dev/nbd5" "$BIN" detach /dev/nbd5
step "attach process exits 0" eval 'wait_for 20 eval "! alive $ATTACH_PID" && wait $ATTACH_PID'
step "nbd5 disconnected, link gone" eval 'disconnected /dev/nbd5 && gone "$T_LINK"'
step "data on the tgtd LUN file" cmp -n 4194304 /tmp/att.bin /tmp/tgt.img
step "tgtd stop" stop_tgtd
log "scenario-daemon: all steps passed"
[ -f "$SUMMARY" ] && cat "$SUMMARY"
exit 0

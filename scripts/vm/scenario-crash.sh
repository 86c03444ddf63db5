#!/bin/bash
# scenario-crash.sh - inside the VM (busybox init, no systemd): the process serving /dev/nbdN is killed
# with SIGKILL while fio writes and verifies on the device, for `iscsi-nbd daemon` and for `attach`.
#   restarted within the dead-connection timeout: it takes the device back (NBD_CMD_RECONFIGURE) and
#     fio ends with 0 I/O and 0 verify errors (requests the dead process had read are retried by the
#     kernel once its request timeout passes);
#   restarted after it: the held I/O fails with EIO (fio ends, it does not hang), and once restarted the
#     same device works again.
#   SIGTERM while the device is in use (no systemd here, so no fd store): the device is left attached
#     and the next daemon takes it back; fio sees no error.
# Run:  scripts/vm/run-in-vm.sh scripts/vm/scenario-crash.sh   (after `swift build --build-tests`)
# vm-apt: tgt fio
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
BIN=${ISCSI_NBD:-$PWD/.build/debug/iscsi-nbd}
export ISCSI_NBD_CONFIG_DIR=/tmp/iscsi-conf-crash ISCSI_NBD_CONTROL_SOCKET=/tmp/iscsi-nbd-crash.sock
IQN=iqn.2026-12.test.iscsi-nbd:crash PORT=3263 DEAD=15
URL=iscsi://127.0.0.1:$PORT/$IQN/1
mkdir -p "$ISCSI_NBD_CONFIG_DIR"
trap cleanup_bg EXIT

configured() { [ -e "/sys/block/${1#/dev/}/pid" ]; }
answers() { "$BIN" -m session >/dev/null 2>&1; }
# fio_bg NAME: writes and verifies 8 MiB of $DEV at a modest rate (about 6 s of I/O), in the background
fio_bg() {
  setsid fio --name="$1" --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=8 \
      --size=8M --rate_iops=350 --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
      --output="$VM_RESULTS/fio-$1.txt" >/dev/null 2>&1 &
  FIO=$!
}
fio_clean() {  # fio_clean NAME: exit 0 and err=0
  wait "$FIO"; local rc=$?
  grep -E "err=|io=" "$VM_RESULTS/fio-$1.txt" | head -3
  [ $rc = 0 ] && grep -q "err= 0" "$VM_RESULTS/fio-$1.txt"
}
fio_failed_within() {  # fio_failed_within NAME SECS: fio ended with an error within SECS
  wait_for "$2" eval "! alive $FIO" || return 1
  wait "$FIO"; local rc=$?
  grep -E "err=" "$VM_RESULTS/fio-$1.txt" | head -2
  [ $rc != 0 ]
}
usable() { head -c 1M /dev/urandom > /tmp/u.bin && dd if=/tmp/u.bin of="$DEV" bs=1M oflag=direct status=none &&
           cmp -n 1048576 /tmp/u.bin "$DEV"; }

step "tgtd start" start_tgtd $PORT
step "target + LUN 64MiB" eval "truncate -s 64M /tmp/crash.img && tgt_add_target 1 $IQN /tmp/crash.img"

# ---- the daemon ---------------------------------------------------------------------------------
printf 'node.session.timeo.replacement_timeout = %s\n' $DEAD > "$ISCSI_NBD_CONFIG_DIR/iscsid.conf"
step "discovery" "$BIN" -m discovery -t st -p 127.0.0.1:$PORT
step "node.startup = automatic" "$BIN" -m node -T $IQN --op update -n node.startup -v automatic
start_daemon() { bg_start "$1" "$BIN" daemon --by-path-dir "" && DPID=$BG_PID && wait_for 30 answers; }
step "daemon start" start_daemon daemon1
DEV=/dev/nbd0
step "$DEV attached" wait_for 30 configured $DEV
fio_bg daemon-restart
sleep 3
step "kill -9 the daemon during fio" eval 'kill -KILL $DPID; wait $DPID 2>/dev/null; true'
sleep 2
step "a new daemon within ${DEAD} s takes $DEV back" eval 'start_daemon daemon2 && wait_for 30 grep -q "re-adopted $DEV" "$VM_RESULTS/daemon2.log"'
step "fio: 0 I/O errors, 0 verify errors" fio_clean daemon-restart
fio_bg daemon-late
sleep 3
step "kill -9 the daemon again" eval 'kill -KILL $DPID; wait $DPID 2>/dev/null; true'
step "past the dead-connection timeout fio fails, it does not hang" fio_failed_within daemon-late $((DEAD + 40))
step "a new daemon takes $DEV back" eval 'start_daemon daemon3 && wait_for 30 grep -q "re-adopted $DEV" "$VM_RESULTS/daemon3.log"'
step "$DEV works again" usable
fio_bg daemon-term
sleep 3
step "SIGTERM (no systemd, so no fd store) during fio: exits, $DEV left attached" eval 'kill -TERM $DPID && wait_for 30 eval "! alive $DPID" && configured $DEV'
step "a new daemon takes $DEV back" eval 'start_daemon daemon4 && wait_for 30 grep -q "re-adopted $DEV" "$VM_RESULTS/daemon4.log"'
step "fio: 0 I/O errors, 0 verify errors" fio_clean daemon-term
step "daemon stop (not in use: detached)" eval 'kill -TERM $DPID && wait_for 30 eval "! alive $DPID" && wait_for 10 eval "! configured $DEV"'

# ---- attach --------------------------------------------------------------------------------------
attach() { bg_start "$1" "$BIN" attach "$URL" --device /dev/nbd2 --dead-connection-timeout $DEAD --by-path-dir "" &&
           APID=$BG_PID && wait_for 30 grep -qx /dev/nbd2 "$VM_RESULTS/$1.log"; }
DEV=/dev/nbd2
step "attach" attach attach1
fio_bg attach-restart
sleep 3
step "kill -9 attach during fio" eval 'kill -KILL $APID; wait $APID 2>/dev/null; true'
sleep 2
step "attach again within ${DEAD} s takes $DEV back" eval 'attach attach2 && grep -q "re-adopted $DEV" "$VM_RESULTS/attach2.log"'
step "fio: 0 I/O errors, 0 verify errors" fio_clean attach-restart
step "detach" "$BIN" detach $DEV
step "attach exits 0" eval 'wait_for 20 eval "! alive $APID" && wait $APID'
step "tgtd stop" stop_tgtd
log "scenario-crash: all steps passed"
exit 0

#!/bin/bash
# scenario-trim.sh - inside the VM: trim and write-zeroes against LIO, and the request sizes of /dev/nbdN.
#   LIO: a fileio backstore (a 128 MiB file on the guest's tmpfs) set up through configfs as a new user
#   would, without a unit serial (so LIO's VPD 00h lists no page), with emulate_tpu=1 (UNMAP),
#   emulate_tpws=1 (WRITE SAME with UNMAP) and unmap_zeroes_data=1 (LBPRZ).
#   1. attach (netlink) -> /dev/nbd6: discard advertised; max_sectors_kb set from LIO's OPTIMAL TRANSFER
#      LENGTH (16384 blocks: 8 MiB) instead of the driver's 128; the average read request (iostat -x's
#      rareq-sz, from /sys/block/nbd6/stat) of 1 MiB buffered reads and of 32 MiB O_DIRECT reads, with the
#      driver's 128 KiB and then with ours.
#   2. ext4 on it: a 32 MiB file written, removed, `fstrim`: the backing file's allocated size drops by that
#      much (holes punched by UNMAP); the other file reads back intact; e2fsck clean.
#   3. `serve` + nbdsh: can_trim, can_zero, can_fast_zero; 8 MiB trimmed -> hole, reads zeros; 8 MiB
#      zeroed (holes allowed: WRITE SAME with UNMAP) -> hole, reads zeros; 8 MiB zeroed with NO_HOLE -> still
#      allocated, reads zeros.
# Run (as root, from the project checkout, after `swift build --build-tests`):
#   scripts/vm/run-in-vm.sh -t 300 -r /tmp/vm-trim scripts/vm/scenario-trim.sh
# vm-apt: e2fsprogs python3 python3-libnbd sysstat
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
ROOT=$(cd "$(dirname "${VM_SCRIPT:-$0}")/../.." && pwd)
BIN=${ISCSI_NBD:-$ROOT/.build/debug/iscsi-nbd}
IQN=iqn.2026-12.test.iscsi-nbd:trim
PORT=3264
IMG=/var/tmp/trim.img
DEV=/dev/nbd6
MNT=/mnt/trim
SOCK=/run/trim-serve.sock
URL=iscsi://127.0.0.1:$PORT/$IQN/0
trap 'cleanup_bg; [ -d $LIO/iscsi/$IQN ] && lio_teardown $IQN $PORT' EXIT
mkdir -p "$MNT"
rm -f "$IMG"

allocated() { stat -c %b "$IMG"; }   # 512-byte blocks the backing file holds
queue() { cat "/sys/block/${DEV#/dev/}/queue/$1"; }
# read_kb: the average read request in KiB since the last call, as iostat -x computes rareq-sz
# (sectors read / reads completed, /sys/block/DEV/stat fields 3 and 1); sets READS and AVG_KB.
LAST_READS=0 LAST_SECTORS=0
read_kb() {
  local s; read -r -a s < "/sys/block/${DEV#/dev/}/stat"
  READS=$((s[0] - LAST_READS)); AVG_KB=$(( (s[2] - LAST_SECTORS) / 2 / (READS > 0 ? READS : 1) ))
  LAST_READS=${s[0]} LAST_SECTORS=${s[2]}
}
# sizes LABEL MAX_KB : 64 x 1 MiB buffered reads, then 2 x 32 MiB O_DIRECT reads, at max_sectors_kb=MAX_KB;
# records the average request of each in $VM_RESULTS/request-sizes.txt
sizes() {
  echo "$2" > "/sys/block/${DEV#/dev/}/queue/max_sectors_kb" || return 1
  echo 3 > /proc/sys/vm/drop_caches; read_kb
  dd if=$DEV of=/dev/null bs=1M count=64 status=none || return 1
  read_kb; BUF_KB=$AVG_KB
  printf '%-28s max_sectors_kb=%-5s 1 MiB buffered reads: %4d requests, avg %5d KiB\n' "$1" "$2" $READS $AVG_KB | tee -a "$VM_RESULTS/request-sizes.txt"
  dd if=$DEV of=/dev/null bs=32M count=2 iflag=direct status=none || return 1
  read_kb; DIRECT_KB=$AVG_KB
  printf '%-28s max_sectors_kb=%-5s 32 MiB O_DIRECT reads: %4d requests, avg %5d KiB\n' "$1" "$2" $READS $AVG_KB | tee -a "$VM_RESULTS/request-sizes.txt"
}
stop_attach() {  # stop_attach PID : detach, the attach process exits 0
  "$BIN" detach $DEV || return 1
  wait_for 20 eval "! alive $1" || return 1
  wait "$1"
}

step "backing file 128MiB" truncate -s 128M "$IMG"
step "LIO fileio, emulate_tpu=1 emulate_tpws=1 unmap_zeroes_data=1, no unit serial" eval \
  'LIO_ATTRIBS="emulate_tpws=1 unmap_zeroes_data=1" lio_setup $IQN "$IMG" $((128 << 20)) $PORT'
step "LIO lists no VPD page (no wwn/vpd_unit_serial)" eval '[ -z "$(sed -n "s/^T10 VPD Unit Serial Number: *//p" $LIO/core/fileio_0/disk0/wwn/vpd_unit_serial)" ]'

# ---- 1. attach: discard, request sizes ---------------------------------------------------------------
step "attach (netlink) $DEV" eval 'bg_start attach "$BIN" attach --device $DEV --by-path-dir "" --log-level debug "$URL";
  A=$BG_PID; wait_for 30 eval "grep -qx $DEV \"$VM_RESULTS/attach.log\""'
log "attach: $(grep -E 'queue limits|VPD 00h' "$VM_RESULTS/attach.log" | sed 's/^.*\] //' | tr '\n' ' ')"
step "the probe found VPD 00h empty and read the SBC pages anyway" eval \
  'grep -q "blockLimits=true logicalBlockProvisioning=true .*VPD 00h lists no page" "$VM_RESULTS/attach.log"'
step "discard advertised (NBD_FLAG_SEND_TRIM)" eval '[ "$(queue discard_max_bytes)" -gt 0 ]'
step "max_sectors_kb 8192 (LIO OPTIMAL TRANSFER LENGTH), set at attach" eval \
  '[ "$(queue max_sectors_kb)" = 8192 ] && grep -q "max_sectors_kb=8192 max_sectors_kb.before=128 .*queue limits set" "$VM_RESULTS/attach.log"'
log "queue: max_sectors_kb=$(queue max_sectors_kb) max_hw_sectors_kb=$(queue max_hw_sectors_kb) minimum_io_size=$(queue minimum_io_size) optimal_io_size=$(queue optimal_io_size) read_ahead_kb=$(queue read_ahead_kb)"
bg_start iostat iostat -dxk ${DEV#/dev/} 1
IOSTAT=$BG_PID
step "request sizes at the driver's 128 KiB" sizes "nbd driver default" 128
step "  ... 1 MiB reads are 128 KiB requests" eval '[ $BUF_KB -le 128 ] && [ $DIRECT_KB -le 128 ]'
step "request sizes at ours" sizes "iscsi-nbd (LIO OTL 8 MiB)" 8192
step "  ... 1 MiB reads are 1 MiB requests, direct ones up to 8 MiB" eval '[ $BUF_KB -ge 768 ] && [ $DIRECT_KB -ge 4096 ]'
bg_stop $IOSTAT
log "iostat -dxk, 1 s intervals with reads (device, r/s, rkB/s, rareq-sz):"
grep -E 'Device|nbd' "$VM_RESULTS/iostat.log" | awk 'NR == 1 || ($2 + 0 > 0) { print "  " $1, $2, $3, $7 }'

# ---- 2. fstrim through /dev/nbdN ---------------------------------------------------------------------
step "mkfs.ext4 (discards the device) + mount" eval 'mkfs.ext4 -q -F -b 4096 $DEV && mount $DEV "$MNT"'
step "write 8MiB keep + 32MiB scratch" eval 'head -c 8M /dev/urandom > /tmp/keep.bin && cp /tmp/keep.bin "$MNT/" &&
  head -c 32M /dev/urandom > "$MNT/scratch.bin" && sync'
FULL=$(allocated)
step "rm scratch + fstrim" eval 'rm "$MNT/scratch.bin" && sync && fstrim -v "$MNT" && sync'
TRIMMED=$(allocated)
log "fstrim: backing file allocated $FULL -> $TRIMMED blocks of 512 ($(( (FULL - TRIMMED) / 2048 )) MiB punched)" | tee -a "$VM_RESULTS/holes.txt"
step "fstrim punched >= 30 MiB of holes in the backstore file" eval '[ $((FULL - TRIMMED)) -ge $((30 << 11)) ]'
step "the kept file reads back" eval 'echo 3 > /proc/sys/vm/drop_caches && cmp /tmp/keep.bin "$MNT/keep.bin"'
step "umount + detach; attach exits 0" eval 'umount "$MNT" && stop_attach $A'
step "e2fsck clean on the backing file" e2fsck -fn "$IMG"

# ---- 3. serve + nbdsh: trim and write-zeroes ----------------------------------------------------------
step "serve" eval 'bg_start serve "$BIN" serve --socket $SOCK "$URL"; SP=$BG_PID; wait_for 30 test -S $SOCK'
nbd_checks() {
  python3 - "$SOCK" "$IMG" <<'PY'
import nbd, os, sys
sock, img = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_unix(sock)
print(f"can_trim={h.can_trim()} can_zero={h.can_zero()} can_fast_zero={h.can_fast_zero()} size={h.get_size()}")
assert h.can_trim() and h.can_zero() and h.can_fast_zero()
MiB = 1 << 20
def sync():  # LIO fileio without fd_buffered_io has no write cache (WCE=0): no flush is offered, none needed
    if h.can_flush():
        h.flush()
def allocated():
    return os.stat(img).st_blocks
def case(name, offset, op, expect_hole):
    data = os.urandom(8 * MiB)
    h.pwrite(data, offset); sync()
    assert h.pread(8 * MiB, offset) == data
    before = allocated()
    op(offset); sync()
    after = allocated()
    print(f"{name}: backing file allocated {before} -> {after} blocks of 512 ({(before - after) * 512 // MiB} MiB punched)")
    assert h.pread(8 * MiB, offset) == bytes(8 * MiB), f"{name}: reads zeros"
    if expect_hole:
        assert before - after >= 8 * MiB // 512 * 9 // 10, f"{name}: hole expected"
    else:
        assert before - after < MiB // 512, f"{name}: must stay allocated"
case("nbdsh trim", 40 * MiB, lambda o: h.trim(8 * MiB, o), True)
case("nbdsh zero (holes allowed)", 56 * MiB, lambda o: h.zero(8 * MiB, o), True)
case("nbdsh zero NO_HOLE", 72 * MiB, lambda o: h.zero(8 * MiB, o, nbd.CMD_FLAG_NO_HOLE), False)
case("nbdsh zero FAST_ZERO", 88 * MiB, lambda o: h.zero(8 * MiB, o, nbd.CMD_FLAG_FAST_ZERO), True)
h.shutdown()
PY
}
nbd_report() {
  local rc
  nbd_checks > "$VM_RESULTS/nbdsh.txt" 2>&1; rc=$?
  cat "$VM_RESULTS/nbdsh.txt"; cat "$VM_RESULTS/nbdsh.txt" >> "$VM_RESULTS/holes.txt"
  return $rc
}
step "nbdsh: trim and zero punch holes, NO_HOLE does not" nbd_report
step "serve stops" bg_stop $SP
step "LIO teardown" lio_teardown $IQN $PORT
rm -f "$IMG"
log "summary:"; cat "$VM_RESULTS/request-sizes.txt" "$VM_RESULTS/holes.txt"
log "scenario-trim: all steps passed"
exit 0

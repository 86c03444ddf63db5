#!/bin/bash
# scenario-open-iscsi.sh - inside the VM: compare the kernel iSCSI initiator
# (open-iscsi: iscsid + iscsi_tcp -> /dev/sdX) with the user-space path
# (qemu-nbd/libiscsi -> nbd-client -> /dev/nbd0) against the same target(s),
# in the same VM run: ext4 round trip on /dev/sdX, then the fio suite on both.
# Run:  scripts/vm/run-in-vm.sh scripts/vm/scenario-open-iscsi.sh [TARGETS] [LUN_SIZE_MiB] [FIO_SECONDS]
#   TARGETS: "tgtd" (default), "lio", or "tgtd lio"
# vm-apt: open-iscsi tgt qemu-utils qemu-block-extra nbd-client fio libiscsi-bin e2fsprogs python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
TARGETS=${1:-tgtd} SIZE_MB=${2:-1024} FIO_RT=${3:-10}
MNT=/mnt/sd
trap 'cleanup_bg; [ -d $LIO/iscsi/$LIO_IQN ] && lio_teardown $LIO_IQN 3261' EXIT
TGT_IQN=iqn.2024-01.test.vm:tgt1 LIO_IQN=iqn.2024-01.test.vm:lio1

log "kernel $(uname -r); targets: $TARGETS"
step "start iscsid (loads iscsi_tcp)" start_iscsid
lsmod | grep -E '^(iscsi_tcp|libiscsi|scsi_transport_iscsi|sd_mod|scsi_mod)' | sed 's/^/  /'

for T in $TARGETS; do
  case $T in
    tgtd) PORT=3260 IQN=$TGT_IQN LUN=1 IMG=/tmp/tgt.img
          step "[$T] create LUN file" truncate -s "${SIZE_MB}M" $IMG
          step "[$T] start tgtd" start_tgtd $PORT
          step "[$T] tgtadm target+LUN" tgt_add_target 1 $IQN $IMG ;;
    lio)  PORT=3261 IQN=$LIO_IQN LUN=0 IMG=/tmp/lio.img
          step "[$T] create backing file" truncate -s "${SIZE_MB}M" $IMG
          step "[$T] LIO setup via configfs" lio_setup $IQN $IMG $((SIZE_MB << 20)) $PORT ;;
    *) log "unknown target $T"; exit 2;;
  esac
  P=127.0.0.1:$PORT
  # --- kernel initiator
  step "[$T] iscsiadm discovery+login" iscsi_login $P $IQN $LUN
  log "$SD: $(cat /sys/block/${SD#/dev/}/size) sectors, queue_depth $(cat /sys/block/${SD#/dev/}/device/queue_depth), scheduler $(cat /sys/block/${SD#/dev/}/queue/scheduler)"
  fs_roundtrip $SD $MNT "[$T] open-iscsi"
  step "[$T] iscsiadm logout" iscsi_logout $P $IQN
  step "[$T] re-login" iscsi_login $P $IQN $LUN
  step "[$T] mount ro after re-login" mount -o ro $SD $MNT
  step "[$T] verify after re-login" fs_verify $MNT
  step "[$T] umount" umount $MNT
  fio_suite $SD "$T+open-iscsi(kernel)" "$FIO_RT"
  step "[$T] iscsiadm logout" iscsi_logout $P $IQN
  # --- user-space initiator, same target, same VM
  SOCK=/tmp/nbd-$T.sock
  step "[$T] start qemu-nbd" start_qemu_nbd $SOCK "iscsi://$P/$IQN/$LUN"
  step "[$T] nbd-client attach" nbd_attach $SOCK /dev/nbd0
  fio_suite /dev/nbd0 "$T+qemu-nbd+nbd" "$FIO_RT"
  step "[$T] nbd-client -d" nbd_detach /dev/nbd0
  step "[$T] stop qemu-nbd" bg_stop "$QEMU_NBD_PID"
  case $T in
    tgtd) step "[$T] stop tgtd" stop_tgtd ;;
    lio)  step "[$T] LIO teardown" lio_teardown $IQN $PORT ;;
  esac
done
step "stop iscsid" bg_stop "$ISCSID_PID"
log "summary:"; cat "$SUMMARY"
# ratio kernel initiator / qemu-nbd for each target and job
awk '{lab=$1; split(lab,a,"+"); t=a[1]; kind=(lab ~ /open-iscsi/)?"k":"n"; job=$2" "$3" "$4;
      iops=$5; sub("IOPS=","",iops); if (iops=="") {iops=$6}; v[t" "job" "kind]=iops+0; jobs[t" "job]=1}
     END{for (j in jobs) if (v[j" n"]>0) printf "ratio open-iscsi/qemu-nbd  %-28s %.2fx\n", j, v[j" k"]/v[j" n"]}' "$SUMMARY" | sort | tee -a "$SUMMARY"
log "OK"

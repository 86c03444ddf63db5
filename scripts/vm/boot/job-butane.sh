#!/bin/bash
# job-butane.sh - the first boot of a machine made from dist/butane/iscsi-nbd.bu (applied by
# apply-butane.py, as Ignition would): the sysext image merged at boot, its daemon started, the target
# discovered once, the LUN logged in and mounted at /srv/data by the Butane's mount unit. Two boots.
# vm-apt: tgt e2fsprogs
set -u
. "$(dirname "$0")/lib.sh"
LINK=/dev/disk/by-path/ip-10.0.0.1:3260-iscsi-iqn.2026-12.com.example:storage.disk1-lun-1
section "boot $VM_BOOT_COUNT of the Butane machine"
boot_is_clean
check "the image is merged" sh -c 'systemd-sysext status --no-pager | grep -q iscsi-nbd'
check "iscsi-nbd.service is active" systemctl is-active iscsi-nbd.service
check "the discovery unit wrote the record" test -d /etc/iscsi/nodes/iqn.2026-12.com.example:storage.disk1
iscsi-nbd -m session -P 1 | sed -n '/Target:/p;/iSCSI Session State/p'
check "/srv/data is mounted from $(nbd_of "$LINK")" test "$(findmnt -n -o SOURCE /srv/data)" = "$(nbd_of "$LINK")"
check "it is the LUN's ext4 (label butane-disk1)" test "$(lsblk -no LABEL "$(nbd_of "$LINK")")" = butane-disk1
if [ "$VM_BOOT_COUNT" = 1 ]; then
  head -c 2M /dev/urandom > /srv/data/from-boot-1
  # The checksum is kept on the guest's own disk: each boot has its own results directory.
  (cd /srv/data && sha256sum from-boot-1) | tee "$VM_RESULTS/butane.sha256" > /var/lib/iscsi-nbd-test/butane.sha256
else
  check "the file of boot 1 is there" sh -c "cd /srv/data && sha256sum -c --quiet /var/lib/iscsi-nbd-test/butane.sha256"
  check "no I/O error in boot 1's shutdown" sh -c '! journalctl -b -1 --no-pager | grep -iE "I/O error|EXT4-fs error"'
fi
finish

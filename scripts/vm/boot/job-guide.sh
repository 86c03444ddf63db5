#!/bin/bash
# job-guide.sh - the open-iscsi guide on a systemd + udev machine, with the package installed; two boots.
#   boot 1: install the .deb beside open-iscsi; the guide verbatim (initiator name, credentials in
#           iscsid.conf with no authmethod line, discovery, per-target --op update, --login, systemctl
#           enable); socket activation; udev's names (by-path, by-id) and their .device units, equal to
#           open-iscsi's for the same LUN; a mount unit and an fstab _netdev line on by-path names; the
#           links through logout/login and a target restart; files written with and without fsync.
#   boot 2: both file systems mounted at boot, no failed unit, no timeout in the chain, the files intact
#           (the unsynced ones too), and boot 1's shutdown in order with no I/O error.
# Run by scripts/vm/test-boot.sh, which stages the package beside this script.
# vm-apt: tgt open-iscsi e2fsprogs util-linux iproute2
set -u
. "$(dirname "$0")/lib.sh"
JOB=$(dirname "$0")
PORTAL=127.0.0.1:3260
DATA=iqn.2026-12.test.boot:data LOGS=iqn.2026-12.test.boot:logs PARITY=iqn.2026-12.test.boot:parity
BYPATH=/dev/disk/by-path
DATA_LINK=$BYPATH/ip-$PORTAL-iscsi-$DATA-lun-1
LOGS_LINK=$BYPATH/ip-$PORTAL-iscsi-$LOGS-lun-1
PARITY_LINK=$BYPATH/ip-$PORTAL-iscsi-$PARITY-lun-1

section "boot $VM_BOOT_COUNT: $(uname -r), systemd $(systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p')"
boot_is_clean

if [ "$VM_BOOT_COUNT" = 1 ]; then
  section "install the package beside open-iscsi"
  deb=$(ls "$JOB"/iscsi-nbd_*.deb)
  iscsid_before=$(sha256sum /etc/iscsi/iscsid.conf)
  checkv "dpkg -i $(basename "$deb")" dpkg -i "$deb"
  check "iscsi-nbd --version is the package's version" test "$(iscsi-nbd --version)" = "$(dpkg-query -W -f='${Version}' iscsi-nbd)"
  check "the package ships nothing in /etc" sh -c '! dpkg -L iscsi-nbd | grep -q "^/etc"'
  check "open-iscsi's iscsid.conf untouched" test "$(sha256sum /etc/iscsi/iscsid.conf)" = "$iscsid_before"
  checkv "open-iscsi's files intact (dpkg --verify open-iscsi)" dpkg --verify open-iscsi
  check "iscsiadm still works" iscsiadm --version
  for u in iscsi-nbd.service iscsi-nbd.socket; do
    for doc in $(systemctl show -P Documentation "$u"); do
      case $doc in file:*) check "$u Documentation= $doc is installed" test -s "${doc#file:}";; esac
    done
  done
  check "iscsi-nbd.socket enabled and listening" sh -c 'systemctl is-enabled iscsi-nbd.socket && systemctl is-active iscsi-nbd.socket'
  check "the daemon is not running yet" sh -c '! systemctl is-active iscsi-nbd.service'
  check "udev rule installed" test -s /lib/udev/rules.d/60-iscsi-nbd.rules

  section "socket activation: -m session starts the daemon"
  iscsi-nbd -m session; rc=$?
  check "no sessions yet: exit 21, as iscsiadm" test "$rc" = 21
  check "iscsi-nbd.service was started by its socket" systemctl is-active iscsi-nbd.service
  journalctl -u iscsi-nbd.service --no-pager | tail -n 3

  section "the guide: initiator name and credentials (no authmethod line)"
  run sh -c 'echo "InitiatorName=iqn.2026-12.test.boot:node1" > /etc/iscsi/initiatorname.iscsi'
  cat >> /etc/iscsi/iscsid.conf <<'CONF'
node.session.auth.username = alice
node.session.auth.password = alice-secret-1
node.session.auth.username_in = target1
node.session.auth.password_in = target-secret-1
CONF
  tail -n 4 /etc/iscsi/iscsid.conf | sed 's/password\(_in\)\{0,1\} = .*/password\1 = ********/'

  section "the guide: discovery, per-target settings, login"
  run iscsi-nbd -m discovery -t sendtargets -p $PORTAL | tee /tmp/discovery.txt
  for t in $DATA $LOGS $PARITY; do check "discovered $t" grep -q "$PORTAL,1 $t" /tmp/discovery.txt; done
  check "records say authmethod = None (as open-iscsi writes them)" grep -q "node.session.auth.authmethod = None" "/etc/iscsi/nodes/$DATA/127.0.0.1,3260,1/default"
  run iscsi-nbd -m node --targetname=$LOGS --op update --name=node.session.auth.username --value=bob
  run iscsi-nbd -m node --targetname=$LOGS --op update --name=node.session.auth.password --value=bob-secret-22
  for t in $DATA $LOGS; do run iscsi-nbd -m node --targetname=$t --op update --name=node.startup --value=automatic; done
  run iscsi-nbd -m node --login | tee /tmp/login.txt
  check "login: 3 targets successful" test "$(grep -c 'successful' /tmp/login.txt)" = 3
  run systemctl enable iscsi-nbd
  check "iscsi-nbd.service enabled" systemctl is-enabled iscsi-nbd.service
  iscsi-nbd -m session -P 2 | sed -n '/Target:/p;/iSCSI Session State/p;/authmethod in use/p'
  check "-m session -P 2 says CHAP (mutual) was used" sh -c 'iscsi-nbd -m session -P 2 | grep -q "authmethod in use: CHAP (mutual)"'
  check "no secret in -m session -P 3" sh -c '! iscsi-nbd -m session -P 3 | grep -qE "alice-secret-1|bob-secret-22|target-secret-1"'

  section "udev's names and systemd's device units"
  udevadm settle --timeout=30
  ls -l $BYPATH /dev/disk/by-id | grep nbd
  for l in "$DATA_LINK" "$LOGS_LINK" "$PARITY_LINK"; do
    check "$l -> /dev/nbdN" sh -c "readlink -f '$l' | grep -q '^/dev/nbd[0-9]*$'"
    check "systemd has $(device_unit "$l")" systemctl is-active "$(device_unit "$l")"
  done
  dev=$(nbd_of "$DATA_LINK")
  udevadm info --query=property --name="$dev" | grep -E '^(ID_|DEVLINKS|SYSTEMD_READY)'
  serial=$(prop "$dev" ID_SERIAL)
  check "by-id/scsi-$serial -> $dev" resolves_to "/dev/disk/by-id/scsi-$serial" "$dev"
  check "by-id/wwn-$(prop "$dev" ID_WWN_WITH_EXTENSION) -> $dev" resolves_to "/dev/disk/by-id/wwn-$(prop "$dev" ID_WWN_WITH_EXTENSION)" "$dev"

  section "the same LUN under open-iscsi: the same names"
  ours=$(nbd_of "$PARITY_LINK")
  systemctl start iscsid.service
  run iscsiadm -m node -T $PARITY -p $PORTAL --login
  udevadm settle --timeout=30
  sd=$(for s in /sys/class/iscsi_session/session*; do [ "$(cat "$s/targetname")" = $PARITY ] && ls "$s"/device/target*/*/block; done | head -n 1)
  echo "open-iscsi: /dev/$sd, iscsi-nbd: $ours"
  for key in ID_PATH ID_SERIAL ID_SERIAL_SHORT ID_WWN ID_WWN_WITH_EXTENSION ID_BUS; do
    echo "  $key: open-iscsi '$(prop "/dev/$sd" $key)', iscsi-nbd '$(prop "$ours" $key)'"
    check "$key equal" test -n "$(prop "/dev/$sd" $key)" -a "$(prop "/dev/$sd" $key)" = "$(prop "$ours" $key)"
  done
  run iscsiadm -m node -T $PARITY -p $PORTAL --logout
  systemctl stop iscsid.service iscsid.socket
  udevadm settle --timeout=30
  check "after open-iscsi's logout the link is ours again" wait_for 10 resolves_to "$PARITY_LINK" "$ours"

  section "file systems: a mount unit and an fstab _netdev line, both on by-path names"
  run mkfs.ext4 -q -L data "$DATA_LINK"
  run mkfs.ext4 -q -L logs "$LOGS_LINK"
  mkdir -p /srv/data /srv/logs
  cat > /etc/systemd/system/srv-data.mount <<UNIT
[Unit]
Description=Data disk on iSCSI (iscsi-nbd)
Wants=iscsi-nbd.service
After=iscsi-nbd.service

[Mount]
What=$DATA_LINK
Where=/srv/data
Type=ext4
Options=_netdev,noatime

[Install]
WantedBy=remote-fs.target
UNIT
  echo "$LOGS_LINK /srv/logs ext4 _netdev,noatime 0 2" >> /etc/fstab
  tail -n 1 /etc/fstab
  run systemctl daemon-reload
  run systemctl enable srv-data.mount
  run systemctl start srv-data.mount srv-logs.mount
  check "/srv/data mounted from $(nbd_of "$DATA_LINK")" test "$(findmnt -n -o SOURCE /srv/data)" = "$(nbd_of "$DATA_LINK")"
  check "/srv/logs mounted from $(nbd_of "$LOGS_LINK")" test "$(findmnt -n -o SOURCE /srv/logs)" = "$(nbd_of "$LOGS_LINK")"

  section "the links follow the device: logout removes them, login brings them back"
  run umount /srv/logs
  run iscsi-nbd -m node -T $LOGS --logout
  check "by-path link gone after logout" wait_for 15 test ! -e "$LOGS_LINK"
  check "its device unit is gone" wait_for 15 sh -c "! systemctl is-active '$(device_unit "$LOGS_LINK")'"
  run iscsi-nbd -m node -T $LOGS --login
  check "by-path link back after login" wait_for 15 sh -c "readlink -f '$LOGS_LINK' | grep -q '^/dev/nbd'"
  check "mount /srv/logs again (fstab)" mount /srv/logs
  echo "session recovery under the mounts: the target restarts"
  before=$(nbd_of "$DATA_LINK")
  run systemctl restart test-target.service
  check "sessions back to LOGGED_IN" wait_for 60 sh -c '[ "$(iscsi-nbd -m session -P 1 | grep -c "iSCSI Session State: LOGGED_IN")" = 3 ]'
  check "the data link still leads to $before" resolves_to "$DATA_LINK" "$before"
  check "writing after the recovery works" sh -c 'echo after-recovery > /srv/data/recovery.txt && sync -f /srv/data/recovery.txt'

  section "files: with fsync, and left in the page cache"
  head -c 8M /dev/urandom > /tmp/a.bin
  run dd if=/tmp/a.bin of=/srv/data/synced.bin bs=1M conv=fsync status=none
  run cp /tmp/a.bin /srv/logs/synced.bin && sync -f /srv/logs/synced.bin
  head -c 4M /dev/urandom > /srv/data/unsynced.bin       # no fsync, no sync: the shutdown must flush it
  head -c 4M /dev/urandom > /srv/logs/unsynced.bin
  (cd /srv && sha256sum data/*.bin logs/*.bin data/recovery.txt) > /var/lib/iscsi-nbd-test/files.sha256
  cp /var/lib/iscsi-nbd-test/files.sha256 "$VM_RESULTS/"
  cat /var/lib/iscsi-nbd-test/files.sha256
  finish
fi

section "boot 2: mounted at boot"
for m in /srv/data /srv/logs; do
  check "$m is mounted from /dev/nbdN" sh -c "findmnt -n -o SOURCE $m | grep -q '^/dev/nbd'"
done
findmnt /srv/data; findmnt /srv/logs
check "iscsi-nbd.service active" systemctl is-active iscsi-nbd.service
iscsi-nbd -m session
section "no timeout in the boot"
systemd-analyze critical-chain --no-pager srv-data.mount srv-logs.mount 2>&1 | tee "$VM_RESULTS/critical-chain.txt"
check "no job timed out in this boot" sh -c '! journalctl -b --no-pager | grep -iE "timed out|Dependency failed"'
ready=$(systemctl show -P ActiveEnterTimestampMonotonic srv-data.mount)
check "srv-data.mount active within 60 s of boot ($((ready / 1000000)) s)" test "$ready" -lt 60000000
section "the files of boot 1"
(cd /srv && sha256sum -c /var/lib/iscsi-nbd-test/files.sha256)
check "every file intact, the unsynced ones too" sh -c "cd /srv && sha256sum -c --quiet /var/lib/iscsi-nbd-test/files.sha256"
section "boot 1's shutdown, in order"
# From the harness's poweroff on: the job itself logged out and restarted things before.
journalctl -b -1 -o short-monotonic --no-pager | sed -n '/vm-job: systemctl poweroff/,$p' > /tmp/boot1.txt
grep -E 'Unmount(ing|ed) /srv|srv-(data|logs)\.mount|Stopp(ing|ed) iscsi-nbd|iscsi-nbd\[[0-9]+\]: .*(stopping|detached|logged out|stopped)|Stopp(ing|ed) test-target|Reached target (shutdown|poweroff)' /tmp/boot1.txt | tee "$VM_RESULTS/shutdown-order.txt"
first() { grep -n -m1 -E "$1" /tmp/boot1.txt | cut -d: -f1; }
u_data=$(first 'Unmounted /srv/data|srv-data\.mount: Deactivated|Unmounted srv-data\.mount')
u_logs=$(first 'Unmounted /srv/logs|srv-logs\.mount: Deactivated|Unmounted srv-logs\.mount')
stop=$(first 'Stopping iscsi-nbd\.service|Stopping iscsi-nbd')
detached=$(first 'iscsi-nbd\[[0-9]+\]: .*flushed=yes.*detached')
out=$(first 'iscsi-nbd\[[0-9]+\]: .*logged out')
stopped=$(first 'Stopped iscsi-nbd')
target=$(first 'Stopping test-target')
echo "lines: unmount data ${u_data:-?}, logs ${u_logs:-?}; daemon stopping ${stop:-?}, detached ${detached:-?}, logged out ${out:-?}, stopped ${stopped:-?}; target stopping ${target:-?}"
check "both file systems unmounted before the daemon stopped" test -n "$u_data" -a -n "$u_logs" -a -n "$stop" -a "${u_data:-0}" -lt "${stop:-0}" -a "${u_logs:-0}" -lt "${stop:-0}"
check "every device flushed and detached" test "$(grep -cE 'iscsi-nbd\[[0-9]+\]: .*flushed=yes.*detached' /tmp/boot1.txt)" = 3
check "the daemon flushed, detached and logged out, then stopped" test -n "$detached" -a -n "$out" -a -n "$stopped" -a "${detached:-0}" -lt "${stopped:-0}" -a "${out:-0}" -lt "${stopped:-0}"
check "the target stopped after the daemon" test -n "$target" -a "${target:-0}" -gt "${stopped:-0}"
check "no I/O error in boot 1 (kernel included)" sh -c '! journalctl -b -1 --no-pager | grep -iE "I/O error|EXT4-fs error|blk_update_request"'
check "no I/O error in this boot" sh -c '! journalctl -b -k --no-pager | grep -iE "I/O error|EXT4-fs error"'
finish

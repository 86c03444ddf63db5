#!/bin/bash
# job-sysext.sh - the systemd-sysext image on a machine without the package: `systemd-sysext merge` with
# the image in /var/lib/extensions makes /usr/sbin/iscsi-nbd, the units and the udev rule appear; after
# a daemon-reload the image's Upholds= drop-in runs the daemon, which logs in and serves a LUN as
# /dev/nbdN with udev's by-path link; unmerge takes it all away again. One boot.
# vm-apt: tgt e2fsprogs squashfs-tools
set -u
. "$(dirname "$0")/lib.sh"
JOB=$(dirname "$0")
PORTAL=127.0.0.1:3260 DATA=iqn.2026-12.test.boot:data
LINK=/dev/disk/by-path/ip-$PORTAL-iscsi-$DATA-lun-1
boot_is_clean

section "merge the image"
check "no iscsi-nbd before the merge" test ! -e /usr/sbin/iscsi-nbd
mkdir -p /var/lib/extensions
run cp -L "$JOB/iscsi-nbd-x86-64.raw" /var/lib/extensions/iscsi-nbd.raw
cat /etc/os-release | grep -E '^(ID|VERSION_ID)='
checkv "systemd-sysext merge" systemd-sysext merge
systemd-sysext status --no-pager
check "/usr/sbin/iscsi-nbd is there, version $EXPECT_VERSION" test "$(/usr/sbin/iscsi-nbd --version)" = "$EXPECT_VERSION"
check "runs without a Swift toolchain's libraries" sh -c '! ldd /usr/sbin/iscsi-nbd | grep -qE "libswift|libFoundation|not found"'
check "the udev rule is there" test -s /usr/lib/udev/rules.d/60-iscsi-nbd.rules
run systemctl daemon-reload
check "systemd knows iscsi-nbd.service" sh -c 'systemctl cat iscsi-nbd.service | grep -q "ExecStart=/usr/sbin/iscsi-nbd daemon"'
check "the Upholds= drop-in starts the daemon" wait_for 30 systemctl is-active iscsi-nbd.service
check "and its socket" wait_for 10 systemctl is-active iscsi-nbd.socket
run udevadm control --reload

section "log in and serve a LUN"
cat >> /etc/iscsi/iscsid.conf <<'CONF'
node.session.auth.username = alice
node.session.auth.password = alice-secret-1
CONF
run iscsi-nbd -m discovery -t sendtargets -p $PORTAL
run iscsi-nbd -m node -T $DATA --login
check "by-path link from the image's udev rule" wait_for 15 sh -c "readlink -f '$LINK' | grep -q '^/dev/nbd'"
check "systemd has its device unit" systemctl is-active "$(device_unit "$LINK")"
dev=$(nbd_of "$LINK")
head -c 1M /dev/urandom > /tmp/pattern
check "1 MiB written at 2 MiB, O_DIRECT" dd if=/tmp/pattern of="$dev" bs=1M seek=2 oflag=direct conv=fsync status=none
check "the target's backing file has it" cmp -n 1048576 /tmp/pattern /var/lib/iscsi-nbd-test/data.img 0 2097152
run iscsi-nbd -m node -T $DATA --logout
check "link gone after logout" wait_for 15 test ! -e "$LINK"

section "unmerge"
run systemctl stop iscsi-nbd.service iscsi-nbd.socket
checkv "systemd-sysext unmerge" systemd-sysext unmerge
check "/usr/sbin/iscsi-nbd gone" test ! -e /usr/sbin/iscsi-nbd
finish

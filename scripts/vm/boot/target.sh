#!/bin/sh
# target.sh - the boot tests' iSCSI target, inside the guest: tgtd with CHAP, run by test-target.service
# (a seed unit). Backing files live on the guest's disk, so they survive reboots.
#   target.sh prepare     create the backing files (first boot only; an ext4 on the Butane one)
#   target.sh configure   targets, LUNs, CHAP accounts (after tgtd started); TARGET_SET=butane: only
#                         the Butane example's disk, else the other three
#   target.sh stop        delete the targets and tgtd (tgtd ignores SIGTERM while it has targets)
# Targets (LUN 1 each, 64 MiB unless said):
#   tid 1 iqn.2026-12.test.boot:data    CHAP alice, mutual target1
#   tid 2 iqn.2026-12.test.boot:logs    CHAP bob, mutual target1
#   tid 3 iqn.2026-12.test.boot:parity  CHAP alice, mutual target1 (16 MiB; open-iscsi vs iscsi-nbd names)
#   tid 4 iqn.2026-12.com.example:storage.disk1   CHAP node1 (the Butane example's disk, ext4 inside)
set -eu
DIR=/var/lib/iscsi-nbd-test
adm() { /usr/sbin/tgtadm --lld iscsi "$@"; }
case "$1" in
  prepare)
    mkdir -p $DIR
    for f in data logs; do [ -e $DIR/$f.img ] || truncate -s 64M $DIR/$f.img; done
    [ -e $DIR/parity.img ] || truncate -s 16M $DIR/parity.img
    if [ ! -e $DIR/disk1.img ]; then
      truncate -s 64M $DIR/disk1.img.new && mkfs.ext4 -q -F -L butane-disk1 $DIR/disk1.img.new && mv $DIR/disk1.img.new $DIR/disk1.img
    fi
    ;;
  configure)
    adm --op new --mode account --user alice --password alice-secret-1
    adm --op new --mode account --user bob --password bob-secret-22
    adm --op new --mode account --user node1 --password node1-chap-secret
    adm --op new --mode account --user target1 --password target-secret-1
    if [ "${TARGET_SET:-}" = butane ]; then
      adm --op new --mode target --tid 4 -T iqn.2026-12.com.example:storage.disk1
      adm --op new --mode logicalunit --tid 4 --lun 1 -b $DIR/disk1.img
      adm --op bind --mode account --tid 4 --user node1
      adm --op bind --mode target --tid 4 -I ALL
      exit 0
    fi
    adm --op new --mode target --tid 1 -T iqn.2026-12.test.boot:data
    adm --op new --mode target --tid 2 -T iqn.2026-12.test.boot:logs
    adm --op new --mode target --tid 3 -T iqn.2026-12.test.boot:parity
    adm --op new --mode logicalunit --tid 1 --lun 1 -b $DIR/data.img
    adm --op new --mode logicalunit --tid 2 --lun 1 -b $DIR/logs.img
    adm --op new --mode logicalunit --tid 3 --lun 1 -b $DIR/parity.img
    for t in 1 3; do adm --op bind --mode account --tid $t --user alice; done
    adm --op bind --mode account --tid 2 --user bob
    for t in 1 2 3; do adm --op bind --mode account --tid $t --user target1 --outgoing; done
    for t in 1 2 3; do adm --op bind --mode target --tid $t -I ALL; done
    ;;
  stop)
    for t in 1 2 3 4; do adm --op delete --mode target --tid $t --force 2>/dev/null || true; done
    /usr/sbin/tgtadm --op delete --mode system
    ;;
  *) echo "usage: $0 prepare|configure|stop" >&2; exit 2 ;;
esac

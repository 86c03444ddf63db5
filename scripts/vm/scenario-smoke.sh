#!/bin/bash
# scenario-smoke.sh - checks the harness itself (fast; ~20 s with boot).
# Run:  scripts/vm/run-in-vm.sh -e SMOKE_RC=3 scripts/vm/scenario-smoke.sh arg1 'arg 2'
# Exits $SMOKE_RC (default 0) when every check passes, 1 otherwise.
set -u
fails=0
check() { if "${@:2}" >/dev/null 2>&1; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }
# --ro-root: no /lib/modules in the chroot (the host has none), root not writable
RO=0; [ "$(findmnt -no FSTYPE /)" = 9p ] && RO=1
ovl() { if [ $RO = 1 ]; then echo "skip $1 (--ro-root)"; else check "$@"; fi; }
echo "kernel $(uname -r), args: $(printf '[%s] ' "$@"), cwd $PWD, VM_RESULTS=$VM_RESULTS"
ovl "guest kernel is not the host's" test -d /lib/modules/"$(uname -r)"/kernel
ovl "root is writable (tmpfs overlay)" touch /etc/.vm-write-test
check "/tmp is tmpfs"      sh -c '[ "$(findmnt -no FSTYPE /tmp)" = tmpfs ]'
check "/run is tmpfs"      sh -c '[ "$(findmnt -no FSTYPE /run)" = tmpfs ]'
check "/dev/shm is tmpfs"  sh -c '[ "$(findmnt -no FSTYPE /dev/shm)" = tmpfs ]'
check "results share writable" sh -c 'echo hi > "$VM_RESULTS/smoke.txt"'
check "nbd preloaded"      test -b /dev/nbd0
check "loop preloaded"     test -c /dev/loop-control
check "fuse preloaded"     test -c /dev/fuse
check "lo up"              sh -c 'ip -o link show lo | grep -q "LOWER_UP"'
check "no NIC besides lo"  sh -c '[ "$(ip -o link | grep -vc " lo:")" = 0 ]'
check "127.0.0.1 reachable" sh -c 'busybox nc -l -p 5555 -e true & sleep 0.5; echo x | busybox nc 127.0.0.1 5555; wait'
ovl "modprobe null_blk"  sh -c 'modprobe null_blk nr_devices=1 && test -b /dev/nullb0'
check "configfs mounted"   mountpoint -q /sys/kernel/config
# kernel request_module() -> initramfs /sbin/modprobe -> chroot kmod modprobe
ovl "fs autoload (vfat)" sh -c 'truncate -s 32M /tmp/v.img && busybox mkdosfs /tmp/v.img && mkdir -p /mnt/v && mount -o loop -t vfat /tmp/v.img /mnt/v && umount /mnt/v && grep -q "^vfat " /proc/modules'
# new device -> uevent MODALIAS -> sd_mod autoloaded -> /dev/sda
ovl "driver autoload (scsi_debug -> sd_mod)" sh -c 'modprobe scsi_debug dev_size_mb=8 && for i in $(seq 50); do [ -b /dev/sda ] && exit 0; sleep 0.1; done; exit 1'
[ -z "${SMOKE_RC+x}" ] || check "env passed (-e)" test "$SMOKE_RC" -ge 0
check "bash /dev/fd"       bash -c 'cat <(echo x)'
check "entropy (crng)"     sh -c 'head -c 16 /dev/random | wc -c | grep -q 16'
echo "$fails failures"
[ $fails = 0 ] || exit 1
exit "${SMOKE_RC:-0}"

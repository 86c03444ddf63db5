#!/bin/bash
# boot-systemd.sh (from the shared vm-systemd harness's boot.sh; the kernel comes from run-in-vm.sh
# beside it) - boot a QEMU VM (Debian's stock kernel, the host's userland) with
# systemd as PID 1 (udevd, journald, an ordered shutdown) and run one job
# script in it as a service.  For checking how a storage daemon behaves at
# boot, at reboot (boot the same disk again) and at shutdown.  See README.md.
#
# Usage: boot-systemd.sh -d DISK.img [options] JOB_SCRIPT [ARGS...]
#
# Options:
#   -d, --disk FILE      the guest's writable layer: an ext4 image.  Created
#                        (sparse, --disk-size) when it does not exist; reused
#                        otherwise, so a second call with the same FILE is a
#                        reboot of the same machine (required)
#   -r, --results DIR    host directory shared writable with the guest at
#                        /run/vm/results (default: a new mktemp -d); kept
#   -t, --timeout SECS   kill the VM after SECS seconds (default 600); exit 124
#       --seed DIR       when the disk is created: DIR's contents become the
#                        upper layer, i.e. files added to / (units, .wants
#                        links, /etc config ...).  Ignored if the disk exists
#   -e, --env VAR=VAL    export VAR=VAL to the job (repeatable)
#   -c, --cpus N         vCPUs (default 2)
#   -m, --mem MIB        guest RAM in MiB (default 2048)
#       --disk-size SIZE size of a new disk (default 2G; truncate(1) syntax)
#       --keep-host-units  also start the services, sockets and timers the
#                        HOST enabled in /etc/systemd/system/*.wants (tgt,
#                        postgresql, apt timers, getty@tty1 ...); by default
#                        those links are hidden (links to targets are kept)
#   -w, --boot-wait SECS start the job at guest uptime SECS at the latest,
#                        even if the boot has not finished (a start job that
#                        hangs); default 0: After=multi-user.target and wait
#                        for the end of boot (within --timeout)
#   -a, --append ARGS    extra kernel command line (e.g. systemd.log_level=debug)
#   -q, --quiet          do not stream the console to stdout (still logged)
#   -v, --verbose        no "quiet" on the kernel command line
#       --prepare        only install host packages, fetch kernel, build initrd
#   -h, --help
#
# Environment: VM_CACHE_DIR, VM_KERNEL_PKG, VM_KERNEL_DEB (see run-in-vm.sh,
# which fetches the kernel), VM_ACCEL (default tcg,thread=multi), VM_QEMU_ARGS.
#
# Guest: Debian's stock kernel (cached by run-in-vm.sh --prepare).  The
# initramfs (busybox) builds the root as an overlay:
#   upper = /upper of the ext4 on DISK (virtio disk /dev/vda), persistent
#   lower = a per-boot tmpfs layer (hides what the host enabled, sets
#           default.target = multi-user.target, /lib/modules -> the kernel's
#           module tree) over the host root (9p, read-only)
# then switch_root to /lib/systemd/systemd (the host's systemd 252).  Fresh
# tmpfs on /run and /tmp each boot.  The job runs from vm-job.service
# (/run/systemd/system, Type=exec, After=multi-user.target) once
# `systemctl is-system-running --wait` returns (see -w), with cwd = the caller's $PWD
# when visible, stdin /dev/null, and in its environment: the -e variables,
# VM_RESULTS=/run/vm/results, VM_JOB_DIR=/run/vm/job (the job script's host
# directory, a read-only 9p share: helper files beside it), VM_SCRIPT (its
# host path), VM_BOOT_COUNT (1 on the first boot of DISK, 2 on the next ...).
# Its output goes to RESULTS/job.log (and to the journal and console), its
# exit status to RESULTS/job.rc; then the harness runs `systemctl poweroff`
# (an ordered shutdown).  Afterwards boot.sh reads that boot's journal from
# DISK into RESULTS/journal.txt (short-monotonic, shutdown included).
# RESULTS/console.log is the serial console.  Lines like `# vm-apt: pkg ...`
# in JOB_SCRIPT are apt-get installed on the HOST first (the guest runs the
# host's programs).
#
# A job that runs `systemctl reboot` (or poweroff) itself is stopped with the
# rest of the system (SIGTERM: status 143 from bash, unless it traps it); its
# status is still recorded and the harness does not add a poweroff.  QEMU runs
# with -no-reboot, so a guest reboot ends the VM: boot again to continue.
#
# Exit status: the job's; 124 on timeout; 125 when the VM gave none (boot
# failure, kernel oops/panic (oops=panic), harness error); 130 when
# interrupted.
set -euo pipefail

HARNESS_VERSION=1   # bump to invalidate cached initrds
PROG=${0##*/}
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
die() { echo "$PROG: error: $*" >&2; exit 125; }
note() { echo "$PROG: $*" >&2; }

DISK='' RESULTS='' TIMEOUT=600 SEED='' CPUS=2 MEM=2048 DISK_SIZE=2G HOSTUNITS=hide BOOT_WAIT=0
APPEND_EXTRA='' QUIET=0 VERBOSE=0 PREPARE=0
ENVS=()
while [ $# -gt 0 ]; do
  case $1 in
    -d|--disk) DISK=$2; shift 2;;
    -r|--results) RESULTS=$2; shift 2;;
    -t|--timeout) TIMEOUT=$2; shift 2;;
    --seed) SEED=$2; shift 2;;
    -e|--env) [[ $2 == [A-Za-z_]*=* ]] || die "bad --env $2 (want VAR=VAL)"; ENVS+=("$2"); shift 2;;
    -c|--cpus) CPUS=$2; shift 2;;
    -m|--mem) MEM=$2; shift 2;;
    --disk-size) DISK_SIZE=$2; shift 2;;
    --keep-host-units) HOSTUNITS=keep; shift;;
    -w|--boot-wait) BOOT_WAIT=$2; shift 2;;
    -a|--append) APPEND_EXTRA="$APPEND_EXTRA $2"; shift 2;;
    -q|--quiet) QUIET=1; shift;;
    -v|--verbose) VERBOSE=1; shift;;
    --prepare) PREPARE=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    --) shift; break;;
    -*) die "unknown option $1 (see --help)";;
    *) break;;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, 9p passthrough of /, mknod)"
SCRIPT=
if [ "$PREPARE" = 0 ]; then
  [ $# -ge 1 ] || die "usage: $PROG -d DISK.img [options] JOB_SCRIPT [ARGS...] (see --help)"
  [ -n "$DISK" ] || die "-d DISK.img is required"
  SCRIPT=$(readlink -f -- "$1") || die "no such script: $1"; shift
  [ -f "$SCRIPT" ] || die "no such script: $SCRIPT"
  [ -z "$SEED" ] || [ -d "$SEED" ] || die "--seed $SEED: not a directory"
  [[ $TIMEOUT =~ ^[0-9]+$ ]] || die "bad --timeout $TIMEOUT"
  [[ $BOOT_WAIT =~ ^[0-9]+$ ]] || die "bad --boot-wait $BOOT_WAIT"
fi

CACHE=${VM_CACHE_DIR:-${XDG_CACHE_HOME:-/var/cache}/run-in-vm}
MYCACHE=$CACHE/vm-systemd
mkdir -p "$MYCACHE"

# ---------------------------------------------------------------- host packages
APT_UPDATED=0
apt_install() {   # apt_install PKG... : install the ones not installed yet
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  note "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >&2; then
    [ $APT_UPDATED = 1 ] && die "apt-get install ${missing[*]} failed"
    apt-get update -q >&2 && APT_UPDATED=1
    apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
}
# systemd + udev: the guest's PID 1 and udevd are the host's; journalctl reads
# the guest journal afterwards; e2fsprogs: mke2fs -d, debugfs, e2fsck.
apt_install qemu-system-x86 busybox-static kmod cpio gzip e2fsprogs systemd udev util-linux coreutils
if [ -n "$SCRIPT" ]; then
  mapfile -t SCRIPT_PKGS < <(sed -n 's/^#[[:space:]]*vm-apt:[[:space:]]*//p' "$SCRIPT" | tr -s ' \t' '\n' | grep -v '^$' || true)
  [ ${#SCRIPT_PKGS[@]} -eq 0 ] || apt_install "${SCRIPT_PKGS[@]}"
fi

# ---------------------------------------------------------------- kernel
# The kernel cache (download, dpkg -x, depmod) belongs to run-in-vm.sh.
RUN_IN_VM=$HERE/run-in-vm.sh
[ -x "$RUN_IN_VM" ] || die "$RUN_IN_VM not found (it fetches and caches the kernel)"
PREP=$("$RUN_IN_VM" --prepare) || die "$RUN_IN_VM --prepare failed"
VMLINUZ=$(sed -n 's/^kernel: //p' <<<"$PREP")
MODDIR=$(sed -n 's/^modules: //p' <<<"$PREP")
[ -f "$VMLINUZ" ] && [ -d "$MODDIR" ] || die "unexpected output from run-in-vm.sh --prepare: $PREP"
KVER=${VMLINUZ##*/vmlinuz-}
KROOT=${MODDIR%/lib/modules}
[ -d "$MODDIR/$KVER/kernel" ] || die "no module tree $MODDIR/$KVER"

# ---------------------------------------------------------------- initramfs
# Modules insmod'ed by /init, with their dependencies (in order) from
# `modprobe -d ROOT -S KVER --show-depends`.  Everything else is loaded by
# udev / systemd / modprobe from the full module tree once systemd runs.
BOOT_MODS="virtio_pci virtio_blk 9pnet_virtio 9p overlay ext4"

write_init() {  # the initramfs /init (busybox ash)
cat <<'INIT'
#!/bin/sh
# vm-systemd /init: build the root overlay, then switch_root to systemd.
# Boot args: vm.hostunits=hide|keep vm.bootwait=SECS
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
say() { echo "vm-init: $*"; }
fail() { say "FATAL: $*"; sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
HOSTUNITS=hide BOOTWAIT=0 MSIZE=262144
for a in $(cat /proc/cmdline); do
  case $a in
    vm.hostunits=*) HOSTUNITS=${a#vm.hostunits=};;
    vm.bootwait=*) BOOTWAIT=${a#vm.bootwait=};;
  esac
done
t0=$(cut -d' ' -f1 /proc/uptime)
KVER=$(uname -r)
while read -r ko; do   # crc32c-intel: ENODEV without SSE4.2, crc32c_generic does the job
  insmod "/lib/modules/$KVER/$ko" 2>/tmp/err || grep -qE 'File exists|No such device' /tmp/err || say "insmod $ko: $(cat /tmp/err)"
done < /etc/boot-modules

# /run is moved into the new root: systemd keeps it.  Everything the root
# overlay is built from lives under /run/initramfs/vm, where systemd treats the
# mounts as "extrinsic" (it does not try to unmount them at shutdown;
# systemd-shutdown remounts them read-only at the very end).
mkdir -p /run
mount -t tmpfs -o mode=0755,nosuid,nodev,size=20%,nr_inodes=800k tmpfs /run || fail "tmpfs /run"
V=/run/initramfs/vm
mkdir -p $V/host $V/disk $V/layer $V/modules $V/results $V/job $V/bin /run/vm /newroot
P9="trans=virtio,version=9p2000.L,msize=$MSIZE"
mount -t 9p -o $P9,ro,cache=loose hostroot $V/host || fail "mount 9p hostroot"
mount -t 9p -o $P9,ro,cache=loose modules $V/modules || fail "mount 9p modules"
mount -t 9p -o $P9 results $V/results || fail "mount 9p results"
mount -t 9p -o $P9,ro job $V/job || fail "mount 9p job"
n=0
while [ ! -b /dev/vda ]; do [ $n -ge 100 ] && fail "no /dev/vda"; sleep 0.1; n=$((n+1)); done
mount -t ext4 /dev/vda $V/disk || fail "mount /dev/vda (ext4)"
mkdir -p $V/disk/upper $V/disk/work

# The per-boot layer between the disk and the host root.
H=$V/host L=$V/layer
mount -t tmpfs -o mode=0755 vmlayer $L || fail "tmpfs layer"
ml=lib; [ -L $H/lib ] && ml=$(readlink $H/lib) && ml=${ml#/}   # merged /usr: usr/lib
mkdir -p "$L/$ml" && ln -s $V/modules "$L/$ml/modules"          # /lib/modules/$KVER
mkdir -p $L/etc/systemd/system
ln -s /lib/systemd/system/multi-user.target $L/etc/systemd/system/default.target
hidden=0
if [ "$HOSTUNITS" = hide ]; then
  # whiteouts (char 0:0) for what the host enabled (tgt, postgresql, timers,
  # getty@tty1 ...); the disk (seed, systemctl enable in the guest) wins.
  # Targets stay: Debian enables remote-fs.target (_netdev mounts need it).
  for f in $H/etc/systemd/system/*.wants/* $H/etc/systemd/system/*.requires/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    case $f in *.target) continue;; esac
    rel=${f#$H/}
    mkdir -p "$L/${rel%/*}" && mknod "$L/$rel" c 0 0 && hidden=$((hidden+1)) && echo "/$rel" >> /hidden-units
  done
fi
# systemd would take the host's /.dockerenv to mean "in a container" (no
# remount-ro at shutdown, console-getty, units with ConditionVirtualization=)
for f in .dockerenv .containerenv; do
  { [ -e "$H/$f" ] || [ -L "$H/$f" ]; } && mknod "$L/$f" c 0 0
done
mount -t overlay -o lowerdir=$L:$H,upperdir=$V/disk/upper,workdir=$V/disk/work vmroot /newroot || fail "overlay"

# Harness units: runtime (/run/systemd/system), never written to the disk.
S=/run/systemd/system
mkdir -p $S/multi-user.target.wants $S/local-fs.target.wants /run/systemd/journald.conf.d
cp /vm/vm-job $V/bin/vm-job && chmod 755 $V/bin/vm-job
cp /vm/vm-job.service /vm/tmp.mount $S/
ln -s ../vm-job.service $S/multi-user.target.wants/vm-job.service
if [ "$BOOTWAIT" = 0 ]; then
  mkdir -p $S/vm-job.service.d
  printf '[Unit]\nAfter=multi-user.target\n' > $S/vm-job.service.d/after-multi-user.conf
fi
ln -s ../tmp.mount $S/local-fs.target.wants/tmp.mount
cp /vm/journald.conf /run/systemd/journald.conf.d/50-vm-systemd.conf
ln -s $V/results /run/vm/results
ln -s $V/job /run/vm/job

mkdir -p $V/results/.vm
cat /proc/sys/kernel/random/boot_id > $V/results/.vm/boot-id
[ -e /hidden-units ] && cp /hidden-units $V/results/.vm/hidden-host-units
t1=$(cut -d' ' -f1 /proc/uptime)
echo "$t1" > $V/results/.vm/initramfs-done
say "root ready at ${t1}s (initramfs $(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}')s, $hidden host unit links hidden); exec systemd"
mount --move /run /newroot/run || fail "move /run"
mount --move /dev /newroot/dev && mount --move /sys /newroot/sys && mount --move /proc /newroot/proc || fail "move API mounts"
# plain status lines on the serial console (no ANSI colours); the environment
# of PID 1 does not reach the services
export SYSTEMD_COLORS=0
exec switch_root /newroot /lib/systemd/systemd
INIT
}

write_wrapper() {  # /run/initramfs/vm/bin/vm-job, ExecStart of vm-job.service
cat <<'WRAP'
#!/bin/bash
# vm-job (vm-systemd harness): wait for the end of boot, run the job, record
# its status, power off.
R=/run/vm/results V=/run/vm/results/.vm
up() { local u _; read -r u _ < /proc/uptime; echo "$u"; }
up > "$V/unit-start"
bw=0; read -r bw 2>/dev/null < "$V/boot-wait"
if [ "${bw:-0}" -gt 0 ]; then   # -w: wait for the end of boot until uptime bw at most
  left=$(( bw - $(up | cut -d. -f1) )); [ "$left" -ge 1 ] || left=1
  state=$(timeout "$left" systemctl is-system-running --wait 2>/dev/null) || state=$(systemctl is-system-running 2>/dev/null)
else
  state=$(systemctl is-system-running --wait 2>/dev/null)
fi
echo "$state" > "$V/system-state"
c=0; read -r c 2>/dev/null < /var/lib/vm-systemd/boot-count; c=$((c + 1))
mkdir -p /var/lib/vm-systemd && echo "$c" > /var/lib/vm-systemd/boot-count
export VM_BOOT_COUNT=$c
up > "$V/job-start"
echo "vm-job: boot #$c of this disk, is-system-running: $state at $(up)s; starting the job"
echo "----- job start -----"
# A job (or a daemon it started) that begins a shutdown gets us SIGTERM too:
# keep going until the job has exited, record its status, do not power off.
TERMED=
trap 'TERMED=1' TERM
fifo=/run/vm/job.fifo; rm -f "$fifo"; mkfifo "$fifo"
tee "$R/job.log" < "$fifo" &
teepid=$!
# setsid: daemons that kill(0, SIG) must not hit this wrapper's process group
setsid /bin/bash "$V/cmd.sh" < /dev/null > "$fifo" 2>&1 &
jobpid=$!
while :; do
  wait "$jobpid"; rc=$?
  [ "$rc" -gt 128 ] && kill -0 "$jobpid" 2>/dev/null && continue   # interrupted by the trap
  break
done
# wait for tee to drain the fifo; daemons left behind by the job may hold it open
for _ in $(seq 30); do
  st=; read -r st 2>/dev/null < "/proc/$teepid/stat" || break
  st=${st##*) }; [ "${st%% *}" = Z ] && break
  sleep 0.1
done
kill "$teepid" 2>/dev/null
echo "----- job end: exit $rc at $(up)s -----"
echo "$rc" > "$R/job.rc.tmp" && mv -f "$R/job.rc.tmp" "$R/job.rc"
if [ -n "$TERMED" ] || [ "$(systemctl is-system-running 2>/dev/null)" = stopping ]; then
  echo "vm-job: the system is already shutting down; not calling poweroff"
  exit 0
fi
systemd-analyze time > "$V/analyze-time.txt" 2>&1
echo "vm-job: systemctl poweroff"
systemctl --no-block poweroff
WRAP
}

write_job_unit() {
cat <<'UNIT'
[Unit]
Description=vm-systemd harness job (boot.sh JOB_SCRIPT)
# After=multi-user.target comes from a drop-in written by /init, unless
# boot.sh -w asked to start the job even if the boot never finishes

[Service]
# exec, not oneshot: a oneshot start job would keep the boot "starting" (and
# `systemctl is-system-running --wait` waiting) until the job ends.
Type=exec
ExecStart=/run/initramfs/vm/bin/vm-job
StandardInput=null
StandardOutput=journal+console
StandardError=inherit
SyslogIdentifier=vm-job
TimeoutStopSec=30s
UNIT
}

write_tmp_mount() {
cat <<'UNIT'
# vm-systemd: a fresh tmpfs on /tmp every boot (as the busybox harness does).
# Without it /tmp would be the host's /tmp (read-only lower layer) and
# systemd-tmpfiles --boot would whiteout all of it on the disk.  Mask it in
# the seed (/etc/systemd/system/tmp.mount -> /dev/null) to keep /tmp on disk.
[Unit]
Description=Temporary Directory /tmp (vm-systemd)
ConditionPathIsSymbolicLink=!/tmp
DefaultDependencies=no
Conflicts=umount.target
Before=local-fs.target umount.target
After=swap.target

[Mount]
What=tmpfs
Where=/tmp
Type=tmpfs
Options=mode=1777,strictatime,nosuid,nodev,size=50%,nr_inodes=1m
UNIT
}

write_journald_conf() {
cat <<'CONF'
# vm-systemd: journal on the disk, synced often (a VM killed on timeout keeps
# what was logged up to a second before)
[Journal]
Storage=persistent
SyncIntervalSec=1s
CONF
}

initrd_setup() {
  local busybox=/bin/busybox
  ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked; install busybox-static"
  local key
  key=$( { echo "$HARNESS_VERSION $KVER $BOOT_MODS"; write_init; write_wrapper; write_job_unit; write_tmp_mount
           write_journald_conf; declare -f initrd_setup; sha256sum "$busybox"; } | sha256sum | cut -c1-16)
  INITRD=$MYCACHE/initrd-$KVER-$key.cpio.gz
  [ -s "$INITRD" ] && return 0
  note "building initramfs $INITRD"
  local st
  st=$(mktemp -d "$MYCACHE/initrd.XXXXXX")
  mkdir -p "$st"/{bin,sbin,dev,proc,sys,tmp,etc,run,vm,newroot,lib/modules/$KVER}
  cp "$busybox" "$st/bin/busybox"
  local a
  for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$st/bin/$a"
  done
  for a in insmod rmmod lsmod modprobe poweroff reboot halt switch_root; do ln -sf ../bin/busybox "$st/sbin/$a"; done
  local m f rel seen=" "
  : > "$st/etc/boot-modules"
  for m in $BOOT_MODS; do
    while read -r _ f _; do
      rel=${f#"$KROOT/lib/modules/$KVER/"}
      case $seen in *" $rel "*) continue;; esac
      seen="$seen$rel "
      mkdir -p "$st/lib/modules/$KVER/$(dirname "$rel")"
      case $f in
        *.ko.xz) xz -dc "$f" > "$st/lib/modules/$KVER/${rel%.xz}"; rel=${rel%.xz};;
        *.ko.zst) zstd -qdc "$f" > "$st/lib/modules/$KVER/${rel%.zst}"; rel=${rel%.zst};;
        *) cp "$f" "$st/lib/modules/$KVER/$rel";;
      esac
      echo "$rel" >> "$st/etc/boot-modules"
    done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | grep '^insmod ')
  done
  write_init > "$st/init"; chmod 755 "$st/init"
  write_wrapper > "$st/vm/vm-job"
  write_job_unit > "$st/vm/vm-job.service"
  write_tmp_mount > "$st/vm/tmp.mount"
  write_journald_conf > "$st/vm/journald.conf"
  (cd "$st" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$st"
  find "$MYCACHE" -maxdepth 1 -name "initrd-$KVER-*.cpio.gz" ! -path "$INITRD" -delete  # stale builds
}

exec 9>"$MYCACHE/.lock"
flock 9
initrd_setup
flock -u 9
if [ "$PREPARE" = 1 ]; then
  echo "kernel: $VMLINUZ"; echo "initrd: $INITRD"; echo "modules: $MODDIR"
  exit 0
fi

# ---------------------------------------------------------------- disk
# Layout of the ext4: /upper (overlay upper layer = the guest's changes to /),
# /work (overlayfs workdir).
create_disk() {
  local stage d ref
  stage=$(mktemp -d "${TMPDIR:-/tmp}/vm-systemd-seed.XXXXXX")
  mkdir -p "$stage/upper" "$stage/work"
  [ -z "$SEED" ] || cp -a "$SEED"/. "$stage/upper/"
  # A directory in the upper layer gives the merged directory its owner and
  # mode: make the ones that also exist on the host (/etc, /etc/systemd ...)
  # match the host, whoever checked the seed out with whatever umask.
  while IFS= read -r -d '' d; do
    ref=/${d#"$stage/upper/"}
    if [ -d "$ref" ] && [ ! -L "$ref" ]; then chown --reference="$ref" "$d"; chmod --reference="$ref" "$d"; fi
  done < <(find "$stage/upper" -mindepth 1 -type d -print0)
  chmod 0755 "$stage/upper"
  if [ ! -e "$stage/upper/etc/machine-id" ]; then   # stable for this disk: journalctl -b -1 needs it
    mkdir -p "$stage/upper/etc"
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$stage/upper/etc/machine-id"
    echo >> "$stage/upper/etc/machine-id"
    chmod 0444 "$stage/upper/etc/machine-id"
  fi
  rm -f "$DISK.tmp"
  truncate -s "$DISK_SIZE" "$DISK.tmp"
  mke2fs -q -F -t ext4 -L vmsd-root -E root_owner=0:0 -d "$stage" "$DISK.tmp" || { rm -rf "$stage" "$DISK.tmp"; die "mke2fs failed"; }
  mv "$DISK.tmp" "$DISK"
  rm -rf "$stage"
}
if [ ! -e "$DISK" ]; then
  note "creating $DISK ($DISK_SIZE sparse ext4${SEED:+, seed $SEED})"
  mkdir -p "$(dirname "$DISK")"
  create_disk
else
  [ -z "$SEED" ] || note "$DISK exists: --seed $SEED ignored"
fi
DISK=$(readlink -f "$DISK")

# ---------------------------------------------------------------- job
if [ -z "$RESULTS" ]; then RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/vm-systemd.XXXXXX"); fi
mkdir -p "$RESULTS"; RESULTS=$(readlink -f "$RESULTS")
rm -rf "$RESULTS/.vm"; mkdir -p "$RESULTS/.vm"
rm -f "$RESULTS"/{console.log,job.log,job.rc,journal.txt,qemu.log}
JOBDIR=$(dirname "$SCRIPT")
echo "$BOOT_WAIT" > "$RESULTS/.vm/boot-wait"
{
  echo '# generated by boot.sh'
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/root LANG=C.UTF-8 TERM=dumb TMPDIR=/tmp'
  echo 'export IN_VM=1 VM_RESULTS=/run/vm/results VM_JOB_DIR=/run/vm/job'
  printf 'export VM_SCRIPT=%q\n' "$SCRIPT"
  for e in "${ENVS[@]+"${ENVS[@]}"}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
  printf 'cd %q 2>/dev/null || cd /run/vm/job\n' "$PWD"
  printf 'f=/run/vm/job/%q\n' "${SCRIPT##*/}"
  printf 'if [ -x "$f" ]; then exec "$f"'; for a in "$@"; do printf ' %q' "$a"; done
  printf '; else exec /bin/bash "$f"'; for a in "$@"; do printf ' %q' "$a"; done
  echo '; fi'
} > "$RESULTS/.vm/cmd.sh"

# status_unit_format=name: "[  OK  ] Stopped foo.service." (the serial console is
# 80 columns for systemd 252, "combined" lines get cut in the unit name)
APPEND="console=ttyS0 panic=-1 oops=panic systemd.show_status=1 systemd.status_unit_format=name vm.hostunits=$HOSTUNITS vm.bootwait=$BOOT_WAIT"
[ "$VERBOSE" = 1 ] || APPEND="quiet loglevel=4 $APPEND"
APPEND="$APPEND${APPEND_EXTRA}"
CONSOLE=$RESULTS/console.log
virtfs() { echo "local,path=$1,mount_tag=$2,security_model=none,multidevs=remap${3:+,$3}"; }
# shellcheck disable=SC2206,SC2054
QEMU=(qemu-system-x86_64 -accel "${VM_ACCEL:-tcg,thread=multi}" -cpu max -m "$MEM" -smp "$CPUS"
  -nodefaults -no-user-config -display none -vga none -no-reboot -nic none
  -chardev "file,id=con0,path=$CONSOLE" -serial chardev:con0
  -kernel "$VMLINUZ" -initrd "$INITRD" -append "$APPEND"
  -drive "file=$DISK,format=raw,if=none,id=root,cache=writeback,discard=unmap"
  -device virtio-blk-pci,drive=root,serial=vmsd-root
  -device virtio-rng-pci
  -virtfs "$(virtfs / hostroot readonly=on)"
  -virtfs "$(virtfs "$MODDIR" modules readonly=on)"
  -virtfs "$(virtfs "$RESULTS" results)"
  -virtfs "$(virtfs "$JOBDIR" job readonly=on)"
  ${VM_QEMU_ARGS:-})

# ---------------------------------------------------------------- after the VM
mtime() { stat -c %.9Y "$1" 2>/dev/null || true; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "") print "?"; else printf "%.1f", b - a }'; }

# RESULTS/journal.txt: this boot's journal, read from the disk on the host
# (the guest journal is persistent, so it has the shutdown up to journald's
# last write).  An uncleanly unmounted ext4 (timeout, crash) is read from a
# temporary copy whose ext4 journal is replayed first.
extract_journal() {
  local bid tmp img
  [ -s "$RESULTS/.vm/boot-id" ] || { note "no boot id: no journal.txt"; return 0; }
  bid=$(tr -d -- '-\n' < "$RESULTS/.vm/boot-id")
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/vm-systemd-journal.XXXXXX")
  img=$DISK
  if [ "$DISK_STATE" != clean ]; then
    note "the disk's ext4 was not cleanly unmounted: reading the journal from a replayed copy"
    img=$tmp/disk.img
    cp --sparse=always "$DISK" "$img" && e2fsck -p -E journal_only "$img" >/dev/null 2>&1 || true
  fi
  if debugfs -R "rdump /upper/var/log/journal $tmp" "$img" >/dev/null 2>&1 && [ -d "$tmp/journal" ]; then
    journalctl -D "$tmp/journal" _BOOT_ID="$bid" -o short-monotonic --no-pager > "$RESULTS/journal.txt" 2>&1 ||
      note "journalctl -D failed; see $RESULTS/journal.txt"
  else
    note "no /var/log/journal on the disk: no journal.txt"
  fi
  rm -rf "$tmp"
}

# ---------------------------------------------------------------- run
note "kernel $KVER, disk $DISK, results $RESULTS, timeout ${TIMEOUT}s"
: > "$CONSOLE"
START=$(date +%s.%N)
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$RESULTS/qemu.log" 2>&1 &
TPID=$!
trap 'kill -TERM $TPID 2>/dev/null; wait $TPID 2>/dev/null; exit 130' INT TERM
TAILPID=
if [ "$QUIET" = 0 ]; then
  tail -n +1 -s 0.3 -F --pid=$TPID "$CONSOLE" 2>/dev/null &
  TAILPID=$!
fi
set +e
wait $TPID; QRC=$?
[ -z "$TAILPID" ] || wait "$TAILPID" 2>/dev/null
set -e
trap - INT TERM
END=$(date +%s.%N)
[ -s "$RESULTS/qemu.log" ] && { note "qemu output:"; sed 's/^/  /' "$RESULTS/qemu.log" >&2; }
# ext4 on DISK after the VM: "clean" after an ordered shutdown (systemd-shutdown
# remounts it read-only); "needs_recovery" when the guest did not get there
DISK_STATE=clean
dumpe2fs -h "$DISK" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' && DISK_STATE=needs_recovery
echo "$DISK_STATE" > "$RESULTS/.vm/disk-state"
extract_journal

HOW=
grep -q 'reboot: Power down' "$CONSOLE" && HOW="powered off"
grep -q 'reboot: Restarting system' "$CONSOLE" && HOW="rebooted (QEMU -no-reboot: VM exited)"
T_JOB=$(mtime "$RESULTS/.vm/job-start") T_RC=$(mtime "$RESULTS/job.rc")
G_INIT=$(cat "$RESULTS/.vm/initramfs-done" 2>/dev/null || true)
G_JOB=$(cat "$RESULTS/.vm/job-start" 2>/dev/null || true)
note "timings (s, wall clock): boot to job start $(secs "$START" "$T_JOB")" \
     "[guest uptime: initramfs done ${G_INIT:-?}, job start ${G_JOB:-?} ($(cat "$RESULTS/.vm/system-state" 2>/dev/null || echo ?))]," \
     "job $(secs "$T_JOB" "$T_RC"), job end to VM exit $(secs "$T_RC" "$END"), total $(secs "$START" "$END")"
[ -s "$RESULTS/.vm/analyze-time.txt" ] && note "$(head -n1 "$RESULTS/.vm/analyze-time.txt")"
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  note "TIMEOUT after ${TIMEOUT}s (VM killed); console log: $CONSOLE"
  exit 124
fi
if [ ! -s "$RESULTS/job.rc" ]; then
  note "VM exited (qemu rc=$QRC${HOW:+, $HOW}) without a job status; see $CONSOLE"
  exit 125
fi
RC=$(cat "$RESULTS/job.rc")
[[ $RC =~ ^[0-9]+$ ]] || { note "bad job.rc: $RC"; exit 125; }
note "job exit $RC; VM ${HOW:-exited (qemu rc=$QRC)}; disk $DISK_STATE; results: $RESULTS"
exit "$RC"

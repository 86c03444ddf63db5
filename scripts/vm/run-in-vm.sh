#!/bin/bash
# run-in-vm.sh - run a shell script as root inside a throw-away QEMU VM that
# boots Debian's stock kernel (which has nbd, LIO, open-iscsi, ext4, ... as
# modules) with this machine's own root filesystem as its root.
#
# Why: the host kernel may lack drivers we need (e.g. no CONFIG_BLK_DEV_NBD
# and no /lib/modules); Debian's distro kernel has them all as modules.
#
# Usage: scripts/vm/run-in-vm.sh [options] SCRIPT [ARGS...]   (from the project checkout)
#        scripts/vm/run-in-vm.sh --prepare  # only install deps, fetch kernel, build initrd (CI warm-up)
#
# Options:
#   -t, --timeout SECS   kill the VM after SECS seconds (default 900); exit 124
#   -m, --mem MIB        guest RAM in MiB (default 3072)
#   -c, --cpus N         vCPUs (default 2)
#   -r, --results DIR    host directory shared writable with the guest as
#                        $VM_RESULTS (default: a new mktemp -d); kept afterwards
#   -M, --modules LIST   extra modules to load at boot (comma/space separated;
#                        nbd, loop and fuse always are); anything else can be
#                        modprobe'd from inside the VM
#   -e, --env VAR=VAL    export VAR=VAL to the script (repeatable)
#   -q, --quiet          do not stream the console to stdout (still logged)
#   -v, --verbose        full kernel boot log on the console
#       --ro-root        plain read-only host root (no tmpfs overlay)
#       --prepare        set up cache only, do not boot
#       --refresh        re-resolve linux-image-amd64 via apt (new kernel ABI)
#   -h, --help
#
# Environment:
#   VM_CACHE_DIR   cache (default ${XDG_CACHE_HOME:-/var/cache}/run-in-vm)
#   VM_KERNEL_PKG  kernel package to use (default: what linux-image-amd64 depends on)
#   VM_KERNEL_DEB  path of a local linux-image-*.deb to use instead of apt
#   VM_QEMU_ARGS   extra qemu arguments (word-split)
#   VM_ACCEL       qemu accelerator (default "tcg,thread=multi"; KVM failed here)
#
# Inside the VM the script runs as root, chrooted into the host's root
# filesystem shared read-only over 9p, with a tmpfs overlay on top (so the
# whole tree is writable, writes are thrown away at poweroff), fresh tmpfs on
# /tmp, /run and /dev/shm (the host's /tmp is therefore NOT visible), proc,
# sysfs, devtmpfs, devpts, configfs, lo up and no other network (-nic none).
# The full modules tree of the guest kernel is at /lib/modules/$(uname -r), so
# `modprobe X` works, and the kernel's own request_module() goes through the
# host's kmod too.  No udevd: a busybox `uevent` loop loads drivers by
# MODALIAS for new devices (sd_mod for an iSCSI LUN), /dev is plain
# devtmpfs (no /dev/disk/by-*).  $VM_RESULTS (/run/vm/results) is the host's --results
# directory, writable; job.log (script output) and console.log (serial
# console) land there.  Script stdin is /dev/null.  Lines in the script like
#     # vm-apt: pkg1 pkg2
# name Debian packages that are apt-get installed on the HOST before boot (the
# guest has no network; it uses the host's installed programs).
#
# Exit status: the script's exit status; 124 on timeout; 125 when the VM did
# not report one (boot failure, kernel panic/oops (oops=panic), harness error);
# 130 when interrupted.  Boot to job start: ~5 s guest, ~10-15 s wall (TCG).
set -euo pipefail

HARNESS_VERSION=4   # bump to invalidate cached initrds
PROG=${0##*/}
die() { echo "$PROG: error: $*" >&2; exit 125; }
note() { echo "$PROG: $*" >&2; }

TIMEOUT=900 MEM=3072 CPUS=2 RESULTS= EXTRA_MODS= QUIET=0 VERBOSE=0 ROOTMODE=overlay
PREPARE=0 REFRESH=0
ENVS=()
while [ $# -gt 0 ]; do
  case $1 in
    -t|--timeout) TIMEOUT=$2; shift 2;;
    -m|--mem) MEM=$2; shift 2;;
    -c|--cpus) CPUS=$2; shift 2;;
    -r|--results) RESULTS=$2; shift 2;;
    -M|--modules) EXTRA_MODS="$EXTRA_MODS $2"; shift 2;;
    -e|--env) [[ $2 == [A-Za-z_]*=* ]] || die "bad --env $2"; ENVS+=("$2"); shift 2;;
    -q|--quiet) QUIET=1; shift;;
    -v|--verbose) VERBOSE=1; shift;;
    --ro-root) ROOTMODE=ro; shift;;
    --prepare) PREPARE=1; shift;;
    --refresh) REFRESH=1; shift;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    --) shift; break;;
    -*) die "unknown option $1 (see --help)";;
    *) break;;
  esac
done
[ "$PREPARE" = 1 ] || [ $# -ge 1 ] || die "usage: $PROG [options] SCRIPT [ARGS...] (see --help)"
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, 9p passthrough of /)"
SCRIPT=
if [ "$PREPARE" = 0 ]; then
  SCRIPT=$(readlink -f -- "$1") || die "no such script: $1"; shift
  [ -f "$SCRIPT" ] || die "no such script: $SCRIPT"
fi

CACHE=${VM_CACHE_DIR:-${XDG_CACHE_HOME:-/var/cache}/run-in-vm}
mkdir -p "$CACHE"

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
# qemu-system-x86: the VM; busybox-static: initramfs userland; kmod: modprobe/depmod;
# cpio: packs the initramfs; bash: cmd wrapper in the guest.
apt_install qemu-system-x86 busybox-static kmod cpio gzip bash util-linux
if [ -n "$SCRIPT" ]; then
  mapfile -t SCRIPT_PKGS < <(sed -n 's/^#[[:space:]]*vm-apt:[[:space:]]*//p' "$SCRIPT" | tr -s ' \t' '\n' | grep -v '^$' || true)
  [ ${#SCRIPT_PKGS[@]} -eq 0 ] || apt_install "${SCRIPT_PKGS[@]}"
fi

exec 9>"$CACHE/.lock"
flock 9   # one builder at a time; released when we exit

# ---------------------------------------------------------------- kernel
# Layout: $CACHE/kernels/<pkg>/{deb, root/ (dpkg -x), .ok}; $CACHE/default -> pkg name
kernel_setup() {
  local pkg=${VM_KERNEL_PKG:-} deb=${VM_KERNEL_DEB:-}
  if [ -n "$deb" ]; then
    pkg=$(dpkg-deb -f "$deb" Package) || die "cannot read $deb"
  elif [ -z "$pkg" ]; then
    if [ "$REFRESH" = 0 ] && [ -s "$CACHE/default" ]; then
      pkg=$(cat "$CACHE/default")
    else
      pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
      if [ -z "$pkg" ] && [ $APT_UPDATED = 0 ]; then
        apt-get update -q >&2 && APT_UPDATED=1
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
      fi
      [ -n "$pkg" ] || die "cannot resolve the kernel package that linux-image-amd64 depends on"
    fi
  fi
  KDIR=$CACHE/kernels/$pkg
  if [ ! -e "$KDIR/.ok" ]; then
    note "fetching kernel package $pkg"
    rm -rf "$KDIR"; mkdir -p "$KDIR/dl"
    if [ -n "$deb" ]; then
      cp "$deb" "$KDIR/dl/"
    else
      # apt-get download runs as _apt when it can: give it a directory it may write
      chown _apt "$KDIR/dl" 2>/dev/null || true
      (cd "$KDIR/dl" && apt-get download -q "$pkg" >&2) || {
        [ $APT_UPDATED = 0 ] && apt-get update -q >&2 && APT_UPDATED=1
        (cd "$KDIR/dl" && apt-get download -q "$pkg" >&2)
      } || die "apt-get download $pkg failed"
    fi
    dpkg -x "$KDIR"/dl/*.deb "$KDIR/root" || die "dpkg -x failed"
    local kv
    kv=$(ls "$KDIR/root/lib/modules" | head -n1)
    [ -n "$kv" ] && [ -e "$KDIR/root/boot/vmlinuz-$kv" ] || die "$pkg has no vmlinuz/modules"
    depmod -b "$KDIR/root" "$kv" || die "depmod failed"
    echo "$kv" > "$KDIR/kver"
    rm -rf "$KDIR/dl"
    touch "$KDIR/.ok"
  fi
  [ -n "${VM_KERNEL_PKG:-}${VM_KERNEL_DEB:-}" ] || echo "$pkg" > "$CACHE/default"
  KVER=$(cat "$KDIR/kver")
  KROOT=$KDIR/root
  VMLINUZ=$KROOT/boot/vmlinuz-$KVER
}

# ---------------------------------------------------------------- initramfs
# Modules copied into the initramfs (with their dependencies, resolved by
# `modprobe -d ROOT -S KVER --show-depends`).  BOOT_MODS are insmod'ed by
# /init before anything else; the rest are there so that they load even
# without the 9p modules share.
BOOT_MODS="virtio_pci 9pnet_virtio 9p overlay configfs"
INITRD_MODS="$BOOT_MODS nbd ext4 loop fuse target_core_mod target_core_file target_core_iblock
 iscsi_target_mod iscsi_tcp sd_mod sg"

write_init() {  # the guest's PID 1 (busybox ash)
cat <<'INIT'
#!/bin/sh
# run-in-vm /init (PID 1, busybox).  Boot args: vm.root=overlay|ro vm.preload=a,b
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
KVER=$(uname -r)
ROOTMODE=overlay PRELOAD= MSIZE=262144
for a in $(cat /proc/cmdline); do
  case $a in
    vm.root=*) ROOTMODE=${a#vm.root=};;
    vm.preload=*) PRELOAD=$(echo "${a#vm.preload=}" | tr , ' ');;
  esac
done
say() { echo "vm-init: $*"; }
halt() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
fail() { say "FATAL: $*"; halt; }
t0=$(cut -d' ' -f1 /proc/uptime)
while read -r ko; do
  insmod "/lib/modules/$KVER/$ko" 2>/tmp/err || grep -q 'File exists' /tmp/err || say "insmod $ko: $(cat /tmp/err)"
done < /etc/boot-modules
mkdir -p /lower /rw /newroot /kmods
mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE,ro,cache=loose hostroot /lower || fail "mount hostroot"
if [ "$ROOTMODE" = overlay ]; then
  mount -t tmpfs -o mode=0755 vmroot-rw /rw && mkdir -p /rw/upper /rw/work &&
  mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work vmroot /newroot || fail "overlay"
else
  mount --bind /lower /newroot || fail "bind root"
fi
R=/newroot
# full modules tree of this kernel (9p share of the host cache), read-only
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE,ro,cache=loose modules /kmods; then
  mount --bind /kmods /lib/modules               # for the kernel's request_module (busybox modprobe)
  if [ "$ROOTMODE" = overlay ]; then mkdir -p $R/lib/modules; fi
  [ -d $R/lib/modules ] && mount --bind /kmods $R/lib/modules
else
  say "no modules share: only the initramfs modules are available"
fi
mount -t proc proc $R/proc; mount -t sysfs sysfs $R/sys; mount -t devtmpfs devtmpfs $R/dev
for m in $PRELOAD; do modprobe "$m" || say "modprobe $m failed"; done
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm $R/dev/shm
[ -e $R/dev/fd ] || ln -s /proc/self/fd $R/dev/fd
[ -e $R/dev/stdin ] || ln -s /proc/self/fd/0 $R/dev/stdin
[ -e $R/dev/stdout ] || ln -s /proc/self/fd/1 $R/dev/stdout
[ -e $R/dev/stderr ] || ln -s /proc/self/fd/2 $R/dev/stderr
[ -e $R/dev/ptmx ] || ln -s pts/ptmx $R/dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmp $R/tmp
mount -t tmpfs -o mode=0755,nosuid,nodev run $R/run
grep -q configfs /proc/filesystems && mount -t configfs configfs $R/sys/kernel/config
mkdir -p $R/run/vm/results $R/run/lock
mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE results $R/run/vm/results || fail "mount results"
ip link set lo up; hostname vm
# minimal udev stand-in (no udevd here): load the driver for each new device by
# its MODALIAS, e.g. sd_mod when an iSCSI LUN shows up.  Without it nothing
# would bind a disk driver to a new SCSI device.
setsid uevent /sbin/vm-uevent </dev/null >/dev/null 2>&1 &
V=$R/run/vm/results/.vm
t1=$(cut -d' ' -f1 /proc/uptime)
echo "$t1" > $V/boot-seconds
say "up at ${t1}s (init took $(echo "$t0 $t1" | awk '{printf "%.2f", $2-$1}')s), kernel $KVER, root=$ROOTMODE; running job"
echo "----- job start -----"
# Output goes through a fifo to tee (console + job.log).  We wait for the job's
# main process only: daemons it leaves behind may hold the fifo open forever.
# setsid: a job that does kill(0, SIG) (iscsid does on SIGTERM when it is not
# a process-group leader) must not hit this init's process group.
mkfifo /tmp/job.fifo
tee $R/run/vm/results/job.log < /tmp/job.fifo &
teepid=$!
setsid chroot $R /bin/bash /run/vm/results/.vm/cmd.sh </dev/null >/tmp/job.fifo 2>&1 &
wait $!
rc=$?
echo $rc > $V/exit-code
n=0   # let tee drain the fifo (it exits on EOF unless leftover daemons hold it)
while [ $n -lt 20 ] && [ -e /proc/$teepid ] && ! grep -q ') Z ' /proc/$teepid/stat; do sleep 0.1; n=$((n+1)); done
kill $teepid 2>/dev/null
echo "----- job end: exit $rc at $(cut -d' ' -f1 /proc/uptime)s -----"
halt
INIT
}

initrd_setup() {
  local busybox=/bin/busybox
  ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked; install busybox-static"
  local key
  key=$( { echo "$HARNESS_VERSION $KVER $INITRD_MODS"; write_init; declare -f initrd_setup; sha256sum "$busybox"; } | sha256sum | cut -c1-16)
  INITRD=$KDIR/initrd-$key.cpio.gz
  [ -s "$INITRD" ] && return 0
  note "building initramfs $INITRD"
  local st
  st=$(mktemp -d "$CACHE/initrd.XXXXXX")
  mkdir -p "$st"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules/$KVER}
  cp "$busybox" "$st/bin/busybox"
  local a
  for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$st/bin/$a"
  done
  for a in insmod rmmod lsmod depmod poweroff reboot halt; do ln -sf ../bin/busybox "$st/sbin/$a"; done
  # /sbin/modprobe is also what the kernel runs for request_module() (in the
  # initramfs root): prefer the host's kmod modprobe inside the new root (it
  # knows modules.alias, softdeps and /etc/modprobe.d), else busybox's.
  cat > "$st/sbin/modprobe" <<EOF
#!/bin/sh
if [ -x /newroot/sbin/modprobe ] && [ -e /newroot/lib/modules/$KVER/modules.dep ] && [ -e /newroot/proc/modules ]; then
  exec /bin/chroot /newroot /sbin/modprobe "\$@"
fi
exec /bin/busybox modprobe "\$@"
EOF
  chmod 755 "$st/sbin/modprobe"
  printf '%s\n' '#!/bin/sh' '[ "$ACTION" = add ] && [ -n "$MODALIAS" ] && exec /sbin/modprobe -q -b "$MODALIAS"' > "$st/sbin/vm-uevent"
  chmod 755 "$st/sbin/vm-uevent"
  # resolve dependencies
  local m f rel seen=" "
  : > "$st/etc/boot-modules"
  for m in $INITRD_MODS; do
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
      case " $BOOT_MODS " in *" $m "*) echo "$rel" >> "$st/etc/boot-modules";; esac
    done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | grep '^insmod ')
  done
  cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$st/lib/modules/$KVER/" 2>/dev/null || true
  depmod -b "$st" "$KVER"
  write_init > "$st/init"; chmod 755 "$st/init"
  (cd "$st" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$st"
  find "$KDIR" -maxdepth 1 -name 'initrd-*.cpio.gz' ! -path "$INITRD" -delete  # stale builds
}

kernel_setup
initrd_setup
flock -u 9
if [ "$PREPARE" = 1 ]; then
  echo "kernel: $VMLINUZ"; echo "initrd: $INITRD"; echo "modules: $KROOT/lib/modules"
  exit 0
fi

# ---------------------------------------------------------------- job
if [ -z "$RESULTS" ]; then RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/run-in-vm.XXXXXX"); fi
mkdir -p "$RESULTS"; RESULTS=$(readlink -f "$RESULTS")
rm -rf "$RESULTS/.vm"; mkdir -p "$RESULTS/.vm"
rm -f "$RESULTS/console.log" "$RESULTS/job.log"
cp "$SCRIPT" "$RESULTS/.vm/script"; chmod 755 "$RESULTS/.vm/script"
{
  echo '# generated by run-in-vm.sh'
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/root LANG=C.UTF-8 TERM=dumb TMPDIR=/tmp'
  echo 'export VM_RESULTS=/run/vm/results IN_VM=1'
  printf 'export VM_SCRIPT=%q\n' "$SCRIPT"
  for e in "${ENVS[@]+"${ENVS[@]}"}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
  printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
  printf 'exec /run/vm/results/.vm/script'
  for a in "$@"; do printf ' %q' "$a"; done
  echo
} > "$RESULTS/.vm/cmd.sh"

MODS=$(echo "$EXTRA_MODS" | tr ', ' '\n\n' | grep -v '^$' | paste -sd, - || true)
PRELOAD="nbd,loop,fuse${MODS:+,$MODS}"
APPEND="console=ttyS0 panic=-1 oops=panic vm.root=$ROOTMODE vm.preload=$PRELOAD"
[ "$VERBOSE" = 1 ] || APPEND="$APPEND quiet loglevel=4"
CONSOLE=$RESULTS/console.log
# shellcheck disable=SC2206
QEMU=(qemu-system-x86_64 -accel "${VM_ACCEL:-tcg,thread=multi}" -cpu max -m "$MEM" -smp "$CPUS"
  -nodefaults -no-user-config -display none -vga none -no-reboot -nic none
  -chardev "file,id=con0,path=$CONSOLE" -serial chardev:con0
  -kernel "$VMLINUZ" -initrd "$INITRD" -append "$APPEND"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=$KROOT/lib/modules,mount_tag=modules,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=$RESULTS,mount_tag=results,security_model=none,multidevs=remap"
  ${VM_QEMU_ARGS:-})

note "kernel $KVER, results in $RESULTS, timeout ${TIMEOUT}s"
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
ELAPSED=$(awk -v a="$START" -v b="$END" 'BEGIN{printf "%.1f", b-a}')
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  note "TIMEOUT after ${TIMEOUT}s (VM killed); console log: $CONSOLE"
  exit 124
fi
if [ ! -s "$RESULTS/.vm/exit-code" ]; then
  note "VM exited (qemu rc=$QRC) after ${ELAPSED}s without an exit code; see $CONSOLE"
  exit 125
fi
RC=$(cat "$RESULTS/.vm/exit-code")
note "script exit $RC; VM wall ${ELAPSED}s (guest boot $(cat "$RESULTS/.vm/boot-seconds" 2>/dev/null || echo ?)s); results: $RESULTS"
exit "$RC"

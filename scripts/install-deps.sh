#!/usr/bin/env bash
# Installs the Debian packages iscsi-nbd builds, runs and tests with. Idempotent; needs root (or sudo).
#   scripts/install-deps.sh          runtime + test peers
#   scripts/install-deps.sh --vm     also what the kernel tests in a QEMU VM need
set -euo pipefail

packages=(
    libnbd-dev            # libnbd: the independent NBD client the tests drive from Swift
    libnbd-bin            # nbdinfo, nbdcopy
    python3-libnbd        # nbdsh
    tgt                   # tgtd: the iSCSI target the tests and the demo log in to
    open-isns-server      # isnsd: iSNS discovery tests
    open-isns-utils       # isnsadm
    fio                   # fio's nbd engine (verify runs)
    libiscsi-bin          # iscsi-inq, iscsi-ls, iscsi-perf
    qemu-utils            # qemu-nbd: the peer the benchmark compares with
    qemu-block-extra      # qemu's libiscsi block driver (iscsi:// URLs)
    nbdkit                # a reference NBD server for the kernel netlink checks
    open-iscsi            # iscsiadm: node records are checked against it; the kernel initiator in VM benchmarks
    iproute2              # ip netns / veth / tc: the recovery test between network namespaces
    nftables              # nft: packet loss in that test where the kernel has no netem
    pkg-config
    e2fsprogs
    python3-matplotlib    # the benchmark's chart
    openssl               # throwaway CA and certificates for the NBD TLS tests
    dpkg-dev              # dpkg-shlibdeps: the .deb's Depends (scripts/package.sh)
    squashfs-tools        # mksquashfs: the systemd-sysext image (scripts/package.sh)
    python3-yaml          # the boot test applies the Butane example (scripts/vm/boot/apply-butane.py)
    man-db groff-base     # man, groff: the man pages are checked (scripts/test.sh); systemd-analyze verify resolves man:
    prometheus            # promtool check metrics: the /metrics scrape is linted (docs/metrics.md)
    python3-prometheus-client  # a real Prometheus text parser reads every family of a scrape
)
if [[ "${1:-}" == "--vm" ]]; then
    packages+=(qemu-system-x86 busybox-static kmod cpio systemd udev)   # systemd, udev: the boot tests' guests
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null; then
    echo "install-deps: no Swift toolchain on PATH (Swift 6.1 or newer is needed: https://www.swift.org/install/linux/)" >&2
    exit 1
fi

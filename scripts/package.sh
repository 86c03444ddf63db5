#!/usr/bin/env bash
# Builds iscsi-nbd for machines without a Swift toolchain and packages it, under .build/package/:
#   iscsi-nbd_<version>_<arch>.deb      /usr/sbin/iscsi-nbd, the systemd units, the udev rule, docs, man pages
#   iscsi-nbd-<version>-x86-64.raw      the same as a systemd-sysext image (squashfs, everything under /usr),
#                                       for a read-only /usr (Flatcar / Container Linux: /etc/extensions)
#   iscsi-nbd-x86-64.raw                a link to it under a stable name (dist/butane/iscsi-nbd.bu uses it)
# The version is what the built binary prints for --version (Sources/ISCSINBDCommand/Version.swift), so
# the package, the image and `iscsi-nbd --version` cannot disagree.
#   scripts/package.sh [--no-build] [--out DIR]
# --no-build packages the existing release build. Needs dpkg-deb, dpkg-shlibdeps and mksquashfs
# (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1 out=.build/package
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) build=0 ;;
        --out) out="${2:?--out needs a directory}"; shift ;;
        *) echo "usage: $0 [--no-build] [--out DIR]" >&2; exit 64 ;;
    esac
    shift
done

die() { echo "package: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps mksquashfs; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs it)"
done

# The one release build every script uses (demo, benchmarks, package): the Swift runtime and Foundation
# linked statically, so the binary needs only the C libraries below.
release_flags=(-c release --static-swift-stdlib)
if ((build)); then
    echo "== building (swift build ${release_flags[*]} --product iscsi-nbd)"
    swift build "${release_flags[@]}" --product iscsi-nbd
fi
bin=$(swift build "${release_flags[@]}" --show-bin-path)/iscsi-nbd
[[ -x $bin ]] || die "no release build at $bin (run without --no-build)"
if ldd "$bin" | grep -E 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime'; then
    die "$bin still links the Swift runtime dynamically (the lines above); it would not run without a toolchain"
fi
version=$("$bin" --version)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([~+.-][0-9A-Za-z.~+-]+)?$ ]] || die "unexpected version '$version' from $bin --version"
arch=$(dpkg --print-architecture)
mkdir -p "$out"
stage=$(mktemp -d /tmp/iscsi-nbd-package.XXXXXX)
trap 'rm -rf "$stage"' EXIT

# --- the file tree, shared by the .deb (under / with /lib) and the sysext image (under /usr) -----------
# $1: root, $2: prefix for units and rules ("" for the .deb's /lib, "/usr" for the image's /usr/lib)
populate() {
    local root=$1 lib=$2/lib doc=$1/usr/share/doc/iscsi-nbd
    install -D -m 0755 "$bin" "$root/usr/sbin/iscsi-nbd"
    strip --strip-debug "$root/usr/sbin/iscsi-nbd"   # keeps the symbol table, so crash backtraces have names
    install -D -m 0644 dist/systemd/iscsi-nbd.service "$root$lib/systemd/system/iscsi-nbd.service"
    install -D -m 0644 dist/systemd/iscsi-nbd.socket "$root$lib/systemd/system/iscsi-nbd.socket"
    install -D -m 0644 dist/udev/60-iscsi-nbd.rules "$root$lib/udev/rules.d/60-iscsi-nbd.rules"
    install -D -m 0644 README.md "$doc/README.md"
    for f in docs/*.md; do [[ -e $f ]] && install -D -m 0644 "$f" "$doc/$(basename "$f")"; done
    install -d "$doc/examples"
    install -m 0644 dist/systemd/srv-data.mount "$doc/examples/"
    for f in dist/butane/*.bu; do [[ -e $f ]] && install -m 0644 "$f" "$doc/examples/"; done
    install -m 0644 dist/debian/copyright "$doc/copyright"
    for page in dist/man/*.[1-8]; do
        [[ -e $page ]] || continue
        local section=${page##*.}
        install -D -m 0644 "$page" "$root/usr/share/man/man$section/$(basename "$page")"
        gzip -9n "$root/usr/share/man/man$section/$(basename "$page")"
    done
}

# --- .deb -------------------------------------------------------------------------------------------
deb=$stage/deb
populate "$deb" ""
# Debian wants a changelog; the project's history is git's, so this one entry names the version.
when=$(git log -1 --format=%aD 2>/dev/null || date -R)
printf 'iscsi-nbd (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- %s  %s\n' "$version" \
    "$(git describe --always --dirty 2>/dev/null || echo "a source tree")" "$(sed -n 's/^Maintainer: //p' dist/debian/control)" "$when" \
    | gzip -9n > "$deb/usr/share/doc/iscsi-nbd/changelog.Debian.gz"
# Depends: the shared libraries the binary really uses (dpkg-shlibdeps), and modprobe, which loads nbd.
mkdir -p "$stage/shlibs/debian"
printf 'Source: iscsi-nbd\n\nPackage: iscsi-nbd\nArchitecture: any\n' > "$stage/shlibs/debian/control"
shlibs=$(cd "$stage/shlibs" && dpkg-shlibdeps -O "$deb/usr/sbin/iscsi-nbd" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || die "dpkg-shlibdeps found no dependencies for $bin"
size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
mkdir -p "$deb/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$shlibs, kmod/" -e "s/@SIZE@/$size/" \
    dist/debian/control > "$deb/DEBIAN/control"
for script in postinst prerm postrm; do install -m 0755 "dist/debian/$script" "$deb/DEBIAN/$script"; done
(cd "$deb" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$deb/DEBIAN/md5sums"
debfile=$out/iscsi-nbd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$deb" "$debfile" >/dev/null

# --- systemd-sysext image ---------------------------------------------------------------------------
# ID=_any: no tie to one OS release (systemd-sysext(8), supported since systemd 252); ARCHITECTURE keeps an
# x86-64 image off other machines.
img=$stage/sysext
populate "$img" "/usr"
install -D -m 0644 /dev/stdin "$img/usr/lib/extension-release.d/extension-release.iscsi-nbd" <<EOF
ID=_any
ARCHITECTURE=x86-64
EXTENSION_RELOAD_MANAGER=1
IMAGE_VERSION=$version
EOF
# systemd-sysext merges after PID 1 read its units, so [Install] links to the image's units cannot exist
# at boot: Upholds= drop-ins start them once the units are loaded (Flatcar's ensure-sysext.service reloads
# and restarts multi-user.target after the merge; systemd 255 reloads by itself: EXTENSION_RELOAD_MANAGER).
install -D -m 0644 /dev/stdin "$img/usr/lib/systemd/system/multi-user.target.d/10-iscsi-nbd.conf" <<EOF
# iscsi-nbd (sysext image): run the daemon while the image is merged.
[Unit]
Upholds=iscsi-nbd.service
EOF
install -D -m 0644 /dev/stdin "$img/usr/lib/systemd/system/sockets.target.d/10-iscsi-nbd.conf" <<EOF
# iscsi-nbd (sysext image): the control socket, while the image is merged.
[Unit]
Upholds=iscsi-nbd.socket
EOF
raw=$out/iscsi-nbd-${version}-x86-64.raw
rm -f "$raw"
# gzip (squashfs's default): every kernel with squashfs reads it, and it decompresses faster than xz.
mksquashfs "$img" "$raw" -all-root -noappend -quiet -comp gzip >/dev/null
ln -sfn "$(basename "$raw")" "$out/iscsi-nbd-x86-64.raw"

echo "== version $version"
ls -l "$debfile" "$raw"
echo "Depends: $shlibs, kmod"

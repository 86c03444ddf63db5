#!/usr/bin/env bash
# The demo: installs what is needed, builds iscsi-nbd, starts a local demo iSCSI target (tgtd on
# 127.0.0.1 with a sparse 1 GiB file-backed LUN), logs in and serves the LUN over NBD on a unix socket,
# then shows `nbdinfo` output and writes, reads back and verifies 8 MiB (also against the target's
# backing file). With --keep it keeps serving until Ctrl-C; otherwise it cleans up and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
config=release   # -c debug for a quicker build; release is what the performance numbers are measured with
while [[ $# -gt 0 ]]; do
    case "$1" in
        --keep) keep=1 ;;
        -c|--configuration) config="${2:?-c needs debug or release}"; shift ;;
        -c*) config="${1#-c}" ;;
        *) echo "usage: $0 [--keep] [-c release|debug]" >&2; exit 64 ;;
    esac
    shift
done
[[ "$config" == release || "$config" == debug ]] || { echo "demo: -c must be release or debug" >&2; exit 64; }

scripts/install-deps.sh
work=$(mktemp -d /tmp/iscsi-nbd-demo.XXXXXX)
echo "== building ($config; a first release build takes several minutes)"
# Release is the project's one release build (scripts/package.sh): the Swift runtime linked statically.
flags=(-c "$config"); [[ $config == release ]] && flags+=(--static-swift-stdlib)
if ! swift build "${flags[@]}" --product iscsi-nbd >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "demo: the build failed (full log: $work/build.log)" >&2
    exit 1
fi
bin=$(swift build "${flags[@]}" --show-bin-path)/iscsi-nbd
iqn=iqn.2026-11.org.iscsi-nbd:demo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ctl=$((20000 + RANDOM % 12000))   # tgtd wants a control port below 32768
tgtd_pid="" serve_pid=""

cleanup() {
    [[ -n "$serve_pid" ]] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
    if [[ -n "$tgtd_pid" ]]; then
        tgtadm -C "$ctl" --lld iscsi --op delete --force --mode target --tid 1 >/dev/null 2>&1 || true
        tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
        sleep 0.3; kill "$tgtd_pid" 2>/dev/null || true
    fi
    [[ -n "$serve_pid$tgtd_pid" ]] && rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a demo target: tgtd on 127.0.0.1:$port, $iqn, LUN 1 = sparse 1 GiB file"
truncate -s 1G "$work/lun1.img"
tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:$port >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 50); do tgtadm -C "$ctl" --op show --mode system >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/lun1.img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL

sock="$work/nbd.sock"
echo "== $bin serve iscsi://127.0.0.1:$port/$iqn/1 --socket $sock"
"$bin" serve "iscsi://127.0.0.1:$port/$iqn/1" --socket "$sock" &
serve_pid=$!
for _ in $(seq 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
[[ -S "$sock" ]] || { echo "demo: iscsi-nbd did not start" >&2; exit 1; }

uri="nbd+unix:///?socket=$sock"
echo "== nbdinfo $uri"
nbdinfo "$uri"
echo "== nbdinfo --list"
nbdinfo --list "$uri" | sed -n '1,12p'

echo "== writing 8 MiB of random data at offset 100 MiB, reading it back"
head -c 8M /dev/urandom >"$work/data"
/usr/bin/python3 - "$sock" "$work/data" <<'PY'
import nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
data = open(sys.argv[2], 'rb').read()
h.pwrite(data, 100 << 20); h.flush()
back = h.pread(len(data), 100 << 20)
assert back == data, "read-back differs"
print("read back through NBD: identical (%d bytes)" % len(back))
h.shutdown()
PY
cmp <(dd if="$work/lun1.img" bs=1M skip=100 count=8 status=none) "$work/data" \
    && echo "target's backing file at 100 MiB: identical"

if ((keep)); then
    echo "== serving $uri until Ctrl-C"
    wait "$serve_pid"
fi
echo "== demo done"

#!/usr/bin/env bash
# libFuzzer runs over the decoders and parsers that take outside input (Fuzz/<target>/Harness.swift):
#   pdu     iSCSI PDU framing + message decoding + text keys + SendTargets   (Sources/ISCSIProtocol)
#   login   LoginStateMachine fed with target Login Responses, with/without (mutual) CHAP
#   nbd     NBD server handshake (option decoder) + transmission machine (decoder, validator, budget, replies); option reply reader
#   config  iscsid.conf / node records / initiatorname.iscsi / portals / iSCSI names (Sources/ISCSIConfig)
#   isns    iSNS PDU framing, reassembly, attribute and response parsing (Sources/ISNS codec files)
#   server  NBD connection handler on an EmbeddedChannel (buffers, backpressure, write budget) (Sources/NBDServer)
#
# Each harness is compiled with `swiftc -sanitize=fuzzer,address -parse-as-library` over the sources of the
# module it tests (so they are coverage-instrumented) and linked against the uninstrumented dependency
# objects (NIOCore, swift-crypto, CCRC32C) from the normal debug build in .build.
#
# Usage:
#   scripts/fuzz/run.sh --ci                 build all, run each target ~10 s from the seed corpus (CI)
#   scripts/fuzz/run.sh [--time S] [--jobs N] [TARGET...]
#                                            long run (default 600 s per target), corpus kept in
#                                            .build-fuzz/corpus/TARGET (seeded from Fuzz/TARGET/seeds)
#   scripts/fuzz/run.sh --build-only [TARGET...]
#   scripts/fuzz/run.sh --reproduce TARGET FILE   run one input (e.g. a crash-* artifact)
# Crashes are written to .build-fuzz/artifacts/TARGET/ and make the script exit 1. Turn each one into a
# regression test (Tests/*/FuzzResultTests.swift) before fixing it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

all_targets=(pdu login nbd config isns server)
mode=long per_target=600 jobs=1 reproduce=""
targets=()
while (($#)); do
    case "$1" in
        --ci) mode=ci per_target=${FUZZ_CI_SECONDS:-10} ;;
        --time) per_target=$2; shift ;;
        --jobs) jobs=$2; shift ;;
        --build-only) mode=build ;;
        --reproduce) mode=reproduce; targets=("$2"); reproduce=$3; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=("${all_targets[@]}")

start=$SECONDS
out=$root/.build-fuzz
mkdir -p "$out"
export SWIFT_BACKTRACE=enable=no  # keep Swift's crash handler out of libFuzzer's way

# Dependency objects and module maps come from the debug build (built here if missing).
build=${FUZZ_DEPS_BUILD:-$(swift build --show-bin-path)}
if [[ ! -f $build/Modules/NIOCore.swiftmodule || ! -f $build/Modules/Crypto.swiftmodule || ! -f $build/CCRC32C.build/crc32c.c.o ]]; then
    echo "== fuzz: building dependencies (swift build --target ISCSIProtocol)"
    swift build --target ISCSIProtocol
fi
checkouts=$(cd "$build/../.." && pwd)/checkouts

cflags=(-I "$build/Modules")
for m in "$build"/*.build/module.modulemap "$checkouts"/*/Sources/*/include/module.modulemap "$root"/Sources/*/include/module.modulemap; do
    [[ -f $m ]] && cflags+=(-Xcc "-fmodule-map-file=$m")
done
for d in "$checkouts"/*/Sources/*/include "$root"/Sources/*/include; do
    [[ -d $d ]] && cflags+=(-Xcc -I -Xcc "$d")
done

objects_of() {  # object files of the given SwiftPM targets in the debug build
    local t
    for t in "$@"; do
        [[ -d $build/$t.build ]] && find "$build/$t.build" -name '*.o' ! -name '*.swiftmodule.o'
    done
}
nio_objects() {
    objects_of NIOCore _NIODataStructures _NIOBase64 NIOConcurrencyHelpers CNIOLinux CNIODarwin CNIOWindows \
        CNIOWASI CNIOFreeBSD CNIOOpenBSD CNIOAtomics Atomics _AtomicsShims DequeModule InternalCollectionsUtilities ContainersPreview
}

sources_of() {
    case "$1" in
        pdu|login) find Sources/ISCSIProtocol -name '*.swift' ;;
        nbd) find Sources/NBDProtocol -name '*.swift' ;;
        config) find Sources/ISCSIConfig -name '*.swift' ;;
        server) find Sources/NBDServer -name '*.swift' ;;
        isns) printf '%s\n' Sources/ISNS/ISNSPDU.swift Sources/ISNS/ISNSAttribute.swift Sources/ISNS/ISNSConstants.swift Sources/ISNS/ISNSDiscovery.swift ;;
        *) echo "unknown fuzz target $1 (have: ${all_targets[*]})" >&2; return 2 ;;
    esac
}
link_objects_of() {
    case "$1" in
        pdu|login) nio_objects; objects_of CCRC32C Crypto CryptoBoringWrapper CCryptoBoringSSL CCryptoBoringSSLShims CXKCP CXKCPShims ;;
        nbd|isns) nio_objects ;;
        server) nio_objects; objects_of NIOEmbedded NIOPosix CNIOPosix NIOSSL CNIOBoringSSL CNIOBoringSSLShims NIOTLS \
            Logging NBDProtocol BlockBackend ;;
        config) ;;
    esac
}

build_target() {
    local t=$1 bin=$out/fuzz-$1
    local -a srcs objs
    mapfile -t srcs < <(sources_of "$t"; echo "Fuzz/$t/Harness.swift")
    mapfile -t objs < <(link_objects_of "$t")
    # Up to date: skip.
    if [[ -x $bin ]] && [[ -z $(find "${srcs[@]}" -newer "$bin" 2>/dev/null | head -1) ]]; then return 0; fi
    echo "== fuzz: building $t (${#srcs[@]} sources)"
    swiftc -parse-as-library -sanitize=fuzzer,address -Onone -g -swift-version 6 -module-name "Fuzz_$t" \
        -module-cache-path "$out/ModuleCache" "${cflags[@]}" "${srcs[@]}" "${objs[@]}" -o "$bin.tmp" \
        2> >(grep -v "Cannot export local symbol '__asan" >&2)
    mv "$bin.tmp" "$bin"
}

# Build (two at a time: compiling and linking are mostly single-threaded).
pids=()
for t in "${targets[@]}"; do
    sources_of "$t" >/dev/null
    build_target "$t" > "$out/build-$t.log" 2>&1 &
    pids+=($!)
    if ((${#pids[@]} >= 2)); then wait "${pids[0]}" || { cat "$out"/build-*.log; exit 1; }; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || { cat "$out"/build-*.log; exit 1; }; done
cat "$out"/build-*.log 2>/dev/null | grep -v '^$' || true
rm -f "$out"/build-*.log
echo "== fuzz: built ${targets[*]} ($((SECONDS - start)) s)"
[[ $mode == build ]] && exit 0

if [[ $mode == reproduce ]]; then
    exec "$out/fuzz-${targets[0]}" -runs=1 "$reproduce"
fi

failed=()
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t artifacts=$out/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [[ -d Fuzz/$t/seeds ]] && seeds=("Fuzz/$t/seeds")
    flags=(-max_total_time="$per_target" -timeout=10 -rss_limit_mb=2048 -max_len=70000 -print_final_stats=1
        -artifact_prefix="$artifacts/")
    [[ -f Fuzz/$t/dict ]] && flags+=(-dict="Fuzz/$t/dict")
    ((jobs > 1)) && flags+=(-fork="$jobs")
    echo "== fuzz: $t for ${per_target}s"
    if ! "$out/fuzz-$t" "${flags[@]}" "$corpus" "${seeds[@]}" > "$out/$t.log" 2>&1; then
        failed+=("$t")
        tail -60 "$out/$t.log"
        echo "!! fuzz target $t failed; inputs in $artifacts (reproduce: scripts/fuzz/run.sh --reproduce $t FILE)"
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "$out/$t.log" | tr '\n' ' '; echo
    fi
done
echo "== fuzz: done in $((SECONDS - start)) s"
((${#failed[@]} == 0)) || { echo "fuzz failures: ${failed[*]}"; exit 1; }

#!/usr/bin/env bash
# Generates the man page dist/man/iscsi-nbd.8 from the command line's own help, with swift-argument-parser's
# generate-manual command plugin (it runs `iscsi-nbd --experimental-dump-help` on the debug build), so the
# page says what `iscsi-nbd --help` says. dist/man/iscsi-nbd.conf.5 is written by hand.
#   scripts/gen-man.sh            regenerate dist/man/iscsi-nbd.8 (commit it with the option or help change)
#   scripts/gen-man.sh --check    regenerate into a temporary directory; fail with a diff when the committed
#                                 page is stale, or when groff warns about a page in dist/man (scripts/test.sh
#                                 runs this after its build)
# The page's date (.Dd) is kept while the text is unchanged, so regenerating does not make a diff by itself;
# when the text changes the date becomes today's (UTC). Works offline once the dependencies are resolved.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

page=dist/man/iscsi-nbd.8
tmp=$(mktemp -d /tmp/iscsi-nbd-gen-man.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# generate DATE DIR: the page for DATE (yyyy-mm-dd) into DIR/iscsi-nbd.8.
generate() {
    local log=$tmp/plugin.log
    # The plugin builds every product in the given configuration (debug: the build the tests use, so
    # after `swift build` this is a no-op), then writes <plugin work directory>/iscsi-nbd/iscsi-nbd.8.
    if ! swift package plugin generate-manual --configuration debug --section 8 --date "$1" >"$log" 2>&1; then
        cat "$log" >&2
        echo "gen-man: the generate-manual plugin failed (log above)" >&2
        exit 1
    fi
    local out
    out=$(sed -n "s/^Generated manual in '\(.*\)'$/\1/p" "$log" | tail -n 1)
    out=${out#file://}   # printed as a file URL
    [[ -n $out && -s ${out%/}/iscsi-nbd.8 ]] || { cat "$log" >&2; echo "gen-man: no iscsi-nbd.8 in the plugin's output" >&2; exit 1; }
    cp "${out%/}/iscsi-nbd.8" "$2/iscsi-nbd.8"
}

# The committed page's date, as yyyy-mm-dd (".Dd December 6, 2026"); today when there is no page yet.
date=$(date -u +%F)
if [[ -s $page ]]; then
    dd=$(sed -n 's/^\.Dd //p' "$page" | head -n 1)
    [[ -n $dd ]] && date=$(date -u -d "$dd" +%F)
fi

mkdir -p "$tmp/new"
generate "$date" "$tmp/new"

if ((check)); then
    if ! diff -u "$page" "$tmp/new/iscsi-nbd.8" >"$tmp/diff"; then
        cat "$tmp/diff"
        echo "gen-man: $page is stale: the command line's help changed. Run scripts/gen-man.sh and commit the page." >&2
        exit 1
    fi
    # Both pages must render without a warning (man -l shows what groff says).
    for p in dist/man/*.[1-8]; do
        warnings=$(groff -mandoc -ww -z "$p" 2>&1)
        [[ -z $warnings ]] || { echo "$warnings" >&2; echo "gen-man: groff warns about $p" >&2; exit 1; }
    done
    echo "gen-man: $page matches the command line; the pages render without warnings"
    exit 0
fi

if [[ -s $page ]] && cmp -s "$page" "$tmp/new/iscsi-nbd.8"; then
    echo "gen-man: $page is up to date"
    exit 0
fi
# The text changed: date the page today.
today=$(date -u +%F)
[[ $today == "$date" ]] || generate "$today" "$tmp/new"
mkdir -p "$(dirname "$page")"
cp "$tmp/new/iscsi-nbd.8" "$page"
echo "gen-man: wrote $page"

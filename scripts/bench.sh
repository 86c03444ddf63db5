#!/usr/bin/env bash
# Benchmark harness for iscsi-nbd against qemu-nbd (libiscsi) and iscsi-perf (issue 6).
#
#   scripts/bench.sh                 full run (RAM and null LUNs, all jobs)
#   scripts/bench.sh --smoke         ~10-second CI smoke: two short jobs, both servers, report
#   scripts/bench.sh --calibrate     A/A run (qemu-nbd twice): shows the machine's noise floor
#   scripts/bench.sh --metrics-ab [--scrape 1]   the cost of metrics: the same binary with and without
#                                    --metrics-socket in one run (optionally scraped every second)
#   scripts/bench.sh --self-test     unit tests of the parsing and ratio arithmetic
#   scripts/bench.sh --help          all options
#
# Everything runs on 127.0.0.1 with free ports; only processes started here are stopped (by PID).
# The orchestration, parsing, report and chart live in scripts/bench/*.py and run under Debian's
# /usr/bin/python3 (the `python3` on PATH may be a pyenv build without python3-matplotlib).
#
# Debian packages: tgt fio qemu-utils qemu-block-extra libiscsi-bin libnbd-bin python3-matplotlib
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=/usr/bin/python3
if [[ ! -x "$py" ]]; then
    echo "bench.sh: $py not found (apt-get install -y python3 python3-matplotlib)" >&2
    exit 1
fi
if [[ "${1:-}" == "--self-test" ]]; then
    # Unit tests of the harness's parsing and arithmetic (no peers, well under a second).
    exec "$py" -m unittest discover -s "$here/bench" -p 'test_*.py'
fi
exec "$py" "$here/bench/bench.py" "$@"

"""Instructions per I/O of `iscsi-nbd serve` with metrics off, on, and on with a scrape every second, counted
by valgrind's callgrind (instruction counts do not depend on what else the machine runs, unlike IOPS and CPU
time on a shared 2-core machine). Only the fio window is counted (callgrind_control -z before, -d after).

    /usr/bin/python3 scripts/bench/metrics_instructions.py [--ios 20000] [--iscsi-nbd BIN]

Prints one line per (job, mode) and the on/off ratios; writes results.json into --results.
Debian packages: valgrind tgt fio libnbd-bin (and what bench.sh needs for its tgtd).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (its tgtd setup and helpers)

JOBS = {"4k-randread-qd1": ("randread", 1), "4k-randread-qd32": ("randread", 32),
        "4k-randwrite-qd1": ("randwrite", 1), "4k-randwrite-qd32": ("randwrite", 32)}


def scrape(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(30)
        c.connect(path)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        while c.recv(65536):
            pass


def callgrind_total(path: Path) -> int:
    """The `totals:` (or `summary:`) line of a callgrind dump: instructions executed."""
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def measure(binary: str, url: str, out: Path, job: str, mode: str, ios: int) -> dict:
    rw, qd = JOBS[job]
    sock = f"/tmp/iscsi-nbd-instr-{os.getpid()}.sock"
    metrics = f"/tmp/iscsi-nbd-instr-{os.getpid()}-metrics.sock"
    for p in (sock, metrics):
        Path(p).unlink(missing_ok=True)
    prefix = out / f"{job}-{mode}"
    args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p.out", "--dump-instr=no",
            binary, "serve", url, "--socket", sock, "--log-level", "warning"]
    if mode != "off":
        args += ["--metrics-socket", metrics]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{prefix}.log", "wb"))
    try:
        deadline = time.time() + 120
        while not Path(sock).exists():
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"serve did not start: {Path(f'{prefix}.log').read_text()[-500:]}")
            time.sleep(0.2)
        subprocess.run(["nbdinfo", "--size", f"nbd+unix:///?socket={sock}"], check=True, capture_output=True, timeout=120)
        # Warm-up (connections, caches), then count the fio window only.
        fio = ["fio", "--name=instr", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={sock}", f"--rw={rw}", "--bs=4k",
               f"--iodepth={qd}", "--output-format=json"]
        subprocess.run(fio + ["--number_ios=500"], check=True, capture_output=True, timeout=300)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True, timeout=60)
        stop = threading.Event()
        scrapes = [0]

        def scraper():
            while not stop.wait(1.0):
                scrape(metrics)
                scrapes[0] += 1
        thread = threading.Thread(target=scraper, daemon=True) if mode == "scrape" else None
        if thread:
            thread.start()
        started = time.time()
        result = subprocess.run(fio + [f"--number_ios={ios}"], check=True, capture_output=True, text=True, timeout=1200)
        elapsed = time.time() - started
        stop.set()
        if thread:
            thread.join()
        done = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
        completed = done["read"]["total_ios"] + done["write"]["total_ios"]
        before = set(out.glob(f"{job}-{mode}.*.out*"))
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True, timeout=60)
        dumps = sorted(set(out.glob(f"{job}-{mode}.*.out*")) - before, key=lambda p: p.stat().st_mtime)
        instructions = callgrind_total(dumps[-1])
        return {"job": job, "mode": mode, "ios": completed, "instructions": instructions,
                "per_io": instructions / completed, "scrapes": scrapes[0], "seconds": round(elapsed, 1)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ios", type=int, default=20000, help="I/Os counted per run (default 20000)")
    p.add_argument("--iscsi-nbd", default=str(bench.REPO / ".build/release/iscsi-nbd"))
    p.add_argument("--jobs", default=",".join(JOBS))
    p.add_argument("--results", default="/tmp/iscsi-nbd-metrics-instructions")
    a = p.parse_args()
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    tgt = bench.TGTD(out)
    rows = []
    try:
        tgt.start()
        url = tgt.url(tgt.setup(64 * bench.MIB, 512)["null"])
        for job in a.jobs.split(","):
            for mode in ("off", "on", "scrape"):
                r = measure(a.iscsi_nbd, url, out, job, mode, a.ios)
                rows.append(r)
                print(f"{job:18} {mode:6} {r['per_io']:10.0f} instructions/IO  ({r['ios']} I/Os, {r['scrapes']} scrapes, "
                      f"{r['seconds']} s under valgrind)", flush=True)
    finally:
        tgt.stop()
    by = {(r["job"], r["mode"]): r for r in rows}
    print()
    for job in a.jobs.split(","):
        off = by[(job, "off")]["per_io"]
        on, sc = by[(job, "on")], by[(job, "scrape")]
        per_scrape = (sc["instructions"] - sc["ios"] * on["per_io"]) / max(sc["scrapes"], 1)
        print(f"{job:18} on/off {on['per_io'] / off:.4f}  scrape/off {sc['per_io'] / off:.4f}  "
              f"(~{per_scrape:,.0f} instructions per scrape)")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Benchmark iscsi-nbd against qemu-nbd (libiscsi) with fio's nbd engine (issue 6).

One run starts a private tgtd on 127.0.0.1 with a RAM-backed LUN (a preallocated file in /dev/shm)
and a null LUN (`--bstype null`, protocol cost alone), serves each LUN with both NBD servers at
once, and runs every fio job against both servers alternately (the order flips from job to job and
repeat to repeat so neither server always runs on a warm or cold machine). libiscsi's iscsi-perf
runs the read jobs straight at the target for the ceiling. Around each fio job the harness reads
the server's user+sys CPU time from /proc/PID/stat and its peak RSS (VmHWM, reset beforehand
through /proc/PID/clear_refs) from /proc/PID/status.

Results (results.json, report.md, chart.png, raw fio JSON and logs) go to
<repo>/results/bench-<timestamp>/ unless --results says otherwise. Only ratios measured in the
same run are meaningful on a small shared machine; absolute numbers are noisy.

Exit status: 0 run complete; 1 harness or qemu-nbd side broken; 2 iscsi-nbd side missing or
broken (the qemu-nbd side still completes and the report is still written); 3 a target was missed
and --strict was given. Ratios never fail a --smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import threading
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perfprofile  # noqa: E402  (scripts/bench/perfprofile.py)
import report  # noqa: E402  (scripts/bench/report.py)

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_IQN = "iqn.2026-11.org.iscsi-nbd.bench:target"
PERF_INITIATOR = "iqn.2026-11.org.iscsi-nbd.bench:iscsi-perf"


# MARK: - Job matrix


@dataclass(frozen=True)
class Job:
    name: str
    rw: str  # fio rw=
    bs: int  # bytes
    iodepth: int
    numjobs: int = 1
    rwmixread: int | None = None
    # iscsi-perf equivalent: (random, blocks-per-request computed from bs) for pure-read jobs.
    perf: bool = False

    def fio_args(self) -> list[str]:
        args = [f"--rw={self.rw}", f"--bs={self.bs}", f"--iodepth={self.iodepth}",
                f"--numjobs={self.numjobs}", "--group_reporting"]
        if self.rwmixread is not None:
            args.append(f"--rwmixread={self.rwmixread}")
        return args

    def describe(self) -> str:
        mix = f" {self.rwmixread}/{100 - self.rwmixread}" if self.rwmixread is not None else ""
        conns = f", {self.numjobs} connections" if self.numjobs > 1 else ""
        return f"{human_size(self.bs)} {self.rw}{mix} QD{self.iodepth}{conns}"


KIB, MIB = 1024, 1024 * 1024

FULL_JOBS = [
    Job("4k-randread-qd1", "randread", 4 * KIB, 1, perf=True),
    Job("4k-randread-qd32", "randread", 4 * KIB, 32, perf=True),
    Job("4k-randread-qd128", "randread", 4 * KIB, 128, perf=True),
    Job("4k-randwrite-qd1", "randwrite", 4 * KIB, 1),
    Job("4k-randwrite-qd32", "randwrite", 4 * KIB, 32),
    Job("4k-randwrite-qd128", "randwrite", 4 * KIB, 128),
    Job("64k-randrw70-qd16", "randrw", 64 * KIB, 16, rwmixread=70),
    Job("1m-read-qd8", "read", 1 * MIB, 8, perf=True),
    Job("1m-write-qd8", "write", 1 * MIB, 8),
    Job("4k-randread-qd32-4conn", "randread", 4 * KIB, 32, numjobs=4, perf=True),
    Job("4k-randwrite-qd32-4conn", "randwrite", 4 * KIB, 32, numjobs=4),
]
SMOKE_JOBS = ["4k-randread-qd32", "4k-randwrite-qd32"]
# `--profile` without a list: every job that missed an issue 6 target on that LUN in the timed runs
# (issue 6: where a target is missed, the report shows where the time goes).
PROFILE_MISSED = "missed"


def human_size(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB}M"
    if n % KIB == 0:
        return f"{n // KIB}k"
    return str(n)


AA_CONTROL = "qemu-nbd-b"  # --aa: a second, identical qemu-nbd
BASELINE = "iscsi-nbd-base"  # --baseline BIN: another iscsi-nbd build, for A/B of a change in one run


def run_order(servers: list, slot: int) -> list:
    """The servers' order for one job slot (slot = repeat * jobs + job). Two servers alternate AB, BA;
    three rotate and alternate direction, so every server runs first, middle and last equally often."""
    n = len(servers)
    if n < 2:
        return list(servers)
    k = (slot // 2) % n if n > 2 else 0
    rotated = servers[k:] + servers[:k]
    return rotated if slot % 2 == 0 else list(reversed(rotated))


# MARK: - Small helpers


class HarnessError(Exception):
    """The harness itself (tgtd, qemu-nbd, fio) is broken: exit 1."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            return "unknown"
        text = (p.stdout or p.stderr).strip()
        return text.splitlines()[0] if text else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "not available"


def dpkg_version(pkg: str) -> str:
    try:
        p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True, timeout=20)
        return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "not installed"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def proc_cpu_ticks(pid: int) -> int | None:
    """utime+stime (clock ticks) of a process and all its threads, from /proc/PID/stat."""
    try:
        return parse_stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime from a /proc/PID/stat line (fields 14 and 15 of proc(5)).
    The command name (field 2) may contain spaces and parentheses: split after the last ')'."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM to the current RSS (proc(5): writing 5 to clear_refs, Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def stop_pid(proc: subprocess.Popen, name: str, grace: float = 5.0) -> int | None:
    """SIGTERM then SIGKILL a child we started; returns its exit status (negative = signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f}s: SIGKILL")
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# MARK: - tgtd


class TGTD:
    """A private tgtd on 127.0.0.1 (free iSCSI port, control port in tgtd's 1..32767 range)."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.control = 0
        self.backing: list[Path] = []

    def tgtadm(self, *args: str, check: bool = True) -> str:
        cmd = ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} failed: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def start(self) -> None:
        log_path = self.outdir / "tgtd.log"
        for _ in range(8):
            self.port = free_port()
            self.control = random.randint(20000, 32767)
            with open(log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    ["tgtd", "-f", "-C", str(self.control), "--iscsi", f"portal=127.0.0.1:{self.port}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                ok = subprocess.run(["tgtadm", "-C", str(self.control), "--op", "show", "--mode", "system"],
                                    capture_output=True, timeout=10).returncode == 0
                if ok and tcp_accepts(self.port) and self.proc.poll() is None:
                    log(f"tgtd pid {self.proc.pid} on 127.0.0.1:{self.port} (control port {self.control})")
                    return
                time.sleep(0.05)
            self.stop()
        raise HarnessError(f"tgtd did not start; see {log_path}:\n{tail(log_path)}")

    def setup(self, size: int, block_size: int) -> dict[str, int]:
        """Target with LUN 1 = RAM file in /dev/shm, LUN 2 = null backing store. Returns name -> LUN."""
        self.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", TARGET_IQN)
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        shm = Path(f"/dev/shm/iscsi-nbd-bench-{os.getpid()}.img")
        self.backing.append(shm)
        with open(shm, "wb") as f:
            # Preallocate so reads and writes touch real pages from the start.
            os.posix_fallocate(f.fileno(), 0, size)
        bs = ["--blocksize", str(block_size)]
        self.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(shm), *bs)
        self.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2",
                    "--bstype", "null", "-b", "/dev/null", *bs)
        return {"ram": 1, "null": 2}

    def url(self, lun: int) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{TARGET_IQN}/{lun}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # tgtd ignores SIGTERM while it has targets: delete them (forcefully), then the system.
            out = self.tgtadm("--op", "show", "--mode", "target", check=False)
            for m in re.finditer(r"^Target (\d+):", out, re.M):
                self.tgtadm("--op", "delete", "--force", "--mode", "target", "--tid", m.group(1), check=False)
            subprocess.run(["tgtadm", "-C", str(self.control), "--op", "delete", "--mode", "system"],
                           capture_output=True, timeout=30)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for path in self.backing:
            path.unlink(missing_ok=True)
        self.backing.clear()


# MARK: - NBD servers


@dataclass
class Server:
    name: str  # "qemu-nbd" or "iscsi-nbd"
    outdir: Path
    transport: str
    proc: subprocess.Popen | None = None
    uri: str = ""
    error: str | None = None  # set once the server is unusable
    exit_status: int | None = None
    startup_rss_kib: int | None = None

    def command(self, url: str, endpoint: str | int) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, url: str, lun_name: str, expected_size: int | None, timeout: float = 20) -> bool:
        self.error = None
        if self.transport == "unix":
            sock = f"/tmp/iscsi-nbd-bench-{os.getpid()}-{self.name}-{lun_name}.sock"
            Path(sock).unlink(missing_ok=True)
            endpoint: str | int = sock
            self.uri = f"nbd+unix:///?socket={sock}"
        else:
            endpoint = free_port()
            self.uri = f"nbd://127.0.0.1:{endpoint}/"
        self.sock = endpoint if self.transport == "unix" else None
        cmd = self.command(url, endpoint)
        self.log_path = self.outdir / f"{self.name}-{lun_name}.log"
        with open(self.log_path, "ab") as out:
            out.write(("$ " + shlex.join(cmd) + "\n").encode())
            out.flush()
            try:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            except OSError as e:
                self.error = f"cannot run {cmd[0]}: {e}"
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = (f"`{shlex.join(cmd)}` exited with status {self.proc.returncode} before serving; "
                              f"log tail:\n{tail(self.log_path)}")
                return False
            # Probe with a real NBD handshake only (a bare connect makes servers log broken pipes).
            if not isinstance(endpoint, str) or Path(endpoint).exists():
                try:
                    p = subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True, text=True, timeout=15)
                except subprocess.TimeoutExpired:
                    continue  # handshake hung: try again until the deadline
                if p.returncode == 0:
                    try:
                        size = int(p.stdout.strip())
                    except ValueError:
                        self.error = f"nbdinfo --size printed {p.stdout.strip()[:100]!r}"
                        self.stop()
                        return False
                    if expected_size is not None and size != expected_size:
                        self.error = f"export size {size} != LUN size {expected_size}"
                        self.stop()
                        return False
                    self.startup_rss_kib = proc_status_kib(self.pid, "VmRSS")
                    log(f"{self.name} pid {self.pid} serving {lun_name} LUN at {self.uri}")
                    return True
            time.sleep(0.1)
        self.error = f"`{shlex.join(cmd)}` not answering NBD after {timeout:.0f}s; log tail:\n{tail(self.log_path)}"
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.exit_status = stop_pid(self.proc, self.name)
            log(f"{self.name} pid {self.proc.pid} stopped, exit status {self.exit_status}")
        if getattr(self, "sock", None):
            Path(self.sock).unlink(missing_ok=True)


@dataclass
class QemuNBD(Server):
    shared: int = 8

    def command(self, url: str, endpoint: str | int) -> list[str]:
        where = ["-k", endpoint] if isinstance(endpoint, str) else ["-b", "127.0.0.1", "-p", str(endpoint)]
        return ["qemu-nbd", "-t", f"--shared={self.shared}", "-f", "raw", *where, url]


@dataclass
class ISCSINBD(Server):
    binary: str = ""
    extra: list[str] = field(default_factory=list)

    def command(self, url: str, endpoint: str | int) -> list[str]:
        where = ["--socket", endpoint] if isinstance(endpoint, str) else ["--listen", f"127.0.0.1:{endpoint}"]
        return [self.binary, "serve", url, *where, *self.extra]


# MARK: - Metrics cost (--metrics-ab, --scrape)


def metrics_socket(lun_name: str) -> str:
    return f"/tmp/iscsi-nbd-bench-{os.getpid()}-metrics-{lun_name}.sock"


class Scraper:
    """GET /metrics over the metrics socket every `interval` seconds in a thread, as a Prometheus would."""

    def __init__(self, path: str, interval: float):
        self.path, self.interval = path, interval
        self.done = threading.Event()
        self.ok = self.failed = self.bytes = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def scrape_once(self) -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(self.path)
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            raise OSError(data[:80])
        return len(data)

    def loop(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.bytes = self.scrape_once()
                self.ok += 1
            except OSError:
                self.failed += 1

    def stop(self) -> dict:
        self.done.set()
        self.thread.join(timeout=10)
        return {"scrapes": self.ok, "failed": self.failed, "last_scrape_bytes": self.bytes, "interval_s": self.interval}


# MARK: - Data cross-check


# Runs under /usr/bin/python3 (the harness's own interpreter) with Debian's python3-libnbd; `nbdsh`
# itself would pick whichever `python3` is first on PATH.
_NBD_IO = """
import nbd, sys
op, uri, path, offset, length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
h = nbd.NBD()
h.connect_uri(uri)
if op == "write":
    h.pwrite(open(path, "rb").read(), offset)
    h.flush()
else:
    open(path, "wb").write(h.pread(length, offset))
h.shutdown()
"""


def cross_check(servers: list[Server], size: int, workdir: Path) -> str | None:
    """Before timing anything on the RAM LUN: each server writes a random 1 MiB block and flushes,
    every server must read it back unchanged. A server that drops writes or returns stale data would
    otherwise look fast. libnbd runs in subprocesses with timeouts so a hung server cannot hang the
    harness. Returns a problem or None."""
    try:
        import nbd  # noqa: F401  (Debian python3-libnbd)
    except ImportError as e:
        return f"data cross-check skipped: python3-libnbd missing for {sys.executable} ({e})"
    chunk = 1 * MIB
    pattern = workdir / "crosscheck.bin"
    readback = workdir / "crosscheck.read"

    def nbd_io(op: str, uri: str, path: Path, offset: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NBD_IO, op, uri, str(path), str(offset), str(chunk)],
                              capture_output=True, text=True, timeout=60)

    try:
        for i, writer in enumerate(servers):
            offset = (size // 2 + i * 3 * chunk) % (size - chunk)
            offset -= offset % 4096
            data = os.urandom(chunk)
            pattern.write_bytes(data)
            w = nbd_io("write", writer.uri, pattern, offset)
            if w.returncode != 0:
                return f"data cross-check: write through {writer.name} failed: {w.stderr.strip()[-300:]}"
            for reader in servers:
                readback.unlink(missing_ok=True)
                r = nbd_io("read", reader.uri, readback, offset)
                if r.returncode != 0:
                    return f"data cross-check: read through {reader.name} failed: {r.stderr.strip()[-300:]}"
                back = readback.read_bytes()
                if back != data:
                    bad = next((k for k in range(min(len(back), chunk)) if back[k] != data[k]), min(len(back), chunk))
                    return (f"data cross-check: 1 MiB written through {writer.name} at offset {offset} reads back "
                            f"different through {reader.name} (first difference at byte {bad})")
    except subprocess.TimeoutExpired as e:
        return f"data cross-check: an NBD {e.cmd[3]} hung for {e.timeout:.0f}s"
    finally:
        pattern.unlink(missing_ok=True)
        readback.unlink(missing_ok=True)
    return None


# MARK: - fio and iscsi-perf


def parse_fio_json(text: str) -> dict:
    """fio's nbd engine prints "fio: connected to NBD server" before the JSON; skip to the first '{'."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in fio output")
    return json.loads(text[start:])


def fio_metrics(data: dict) -> dict:
    job = data["jobs"][0]  # group_reporting: one aggregated entry
    out: dict = {"fio_error": job.get("error", 0), "client_cpu_pct": job.get("usr_cpu", 0) + job.get("sys_cpu", 0)}
    iops = 0.0
    ios = 0
    bw = 0
    lat_weighted = 0.0
    p99 = 0.0
    for d in ("read", "write"):
        side = job.get(d, {})
        n = side.get("total_ios", 0)
        if not n:
            continue
        iops += side["iops"]
        ios += n
        bw += side["bw_bytes"]
        lat_weighted += side["lat_ns"]["mean"] * n
        pct = side.get("clat_ns", {}).get("percentile", {})
        p99 = max(p99, float(pct.get("99.000000", 0)))
        out[f"{d}_iops"] = side["iops"]
    out.update(iops=iops, ios=ios, bw_bytes=bw, lat_mean_us=(lat_weighted / ios / 1000) if ios else None,
               clat_p99_us=p99 / 1000 if p99 else None)
    return out


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_fio(job: Job, server: Server, runtime: float, ramp: float, size: int | None, path: Path,
            target_pid: int | None = None) -> dict:
    cmd = ["fio", "--output-format=json", f"--output={path}", f"--name={job.name}", "--ioengine=nbd",
           f"--uri={server.uri}", "--time_based", f"--runtime={runtime}", *job.fio_args()]
    if ramp > 0:
        cmd.append(f"--ramp_time={ramp}")
    if size is not None:
        cmd.append(f"--size={size}")
    pid = server.pid
    rec: dict = {"server": server.name, "cmd": shlex.join(cmd)}
    rss_reset = reset_peak_rss(pid)
    rec["loadavg_before"] = loadavg()
    cpu0 = proc_cpu_ticks(pid)
    tcpu0 = proc_cpu_ticks(target_pid) if target_pid else None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if ramp > 0:
        # fio does not count ramp I/Os: take the CPU baseline when the ramp ends.
        time.sleep(ramp)
        cpu0 = proc_cpu_ticks(pid)
        tcpu0 = proc_cpu_ticks(target_pid) if target_pid else None
    try:
        stdout, stderr = proc.communicate(timeout=runtime + ramp + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        rec["error"] = f"fio hung past {runtime + ramp + 60:.0f}s (server stalled?)"
    except BaseException:
        proc.kill()  # interrupted: do not leave our fio behind
        proc.wait()
        raise
    wall = time.monotonic() - t0
    cpu1 = proc_cpu_ticks(pid)
    tcpu1 = proc_cpu_ticks(target_pid) if target_pid else None
    rec["peak_rss_kib"] = proc_status_kib(pid, "VmHWM")
    rec["rss_kib"] = proc_status_kib(pid, "VmRSS")
    rec["peak_rss_scope"] = "job" if rss_reset else "process lifetime"
    rec["wall_s"] = wall
    if server.proc is not None and server.proc.poll() is not None:
        rec["error"] = (f"{server.name} died during the job (status {server.proc.returncode}); "
                        f"log tail:\n{tail(server.log_path)}")
    if "error" not in rec and proc.returncode != 0:
        rec["error"] = f"fio exited {proc.returncode}: {(stderr or stdout).strip()[-500:]}"
    try:
        rec.update(fio_metrics(parse_fio_json(path.read_text())))
    except (OSError, ValueError, KeyError, IndexError) as e:
        rec.setdefault("error", f"cannot parse fio output {path}: {e}; stderr: {stderr.strip()[-300:]}")
        return rec
    if rec.get("fio_error"):
        rec.setdefault("error", f"fio reported error {rec['fio_error']}")
    if cpu0 is not None and cpu1 is not None and rec.get("ios"):
        cpu_s = (cpu1 - cpu0) / CLK_TCK
        rec["server_cpu_s"] = cpu_s
        rec["cpu_ms_per_1k_io"] = cpu_s * 1000 * 1000 / rec["ios"]
    if tcpu0 is not None and tcpu1 is not None and rec.get("ios"):
        # The target's cost for the same I/Os: shows when a server sends more or smaller commands.
        rec["target_cpu_ms_per_1k_io"] = (tcpu1 - tcpu0) / CLK_TCK * 1e6 / rec["ios"]
    return rec


IOPS_RE = re.compile(r"iops average (\d+)")


def parse_iscsi_perf(text: str) -> int | None:
    """iscsi-perf redraws a status line with '\r'; the last "iops average N" is the whole run's."""
    found = IOPS_RE.findall(text)
    return int(found[-1]) if found else None


def run_iscsi_perf(job: Job, url: str, block_size: int, runtime: float, outdir: Path, tag: str) -> dict:
    """iscsi-perf reads the LUN with `-m` requests in flight; the last "iops average N" is the result.
    A job with numjobs > 1 runs that many iscsi-perf processes at once and sums them."""
    blocks = max(1, job.bs // block_size)
    secs = max(1, int(round(runtime)))
    procs = []
    for i in range(job.numjobs):
        cmd = ["iscsi-perf", "-i", f"{PERF_INITIATOR}-{i}", "-m", str(job.iodepth), "-b", str(blocks),
               "-t", str(secs)]
        if job.rw.startswith("rand"):
            cmd.append("-r")
        cmd.append(url)
        out = open(outdir / f"iscsi-perf-{tag}-{i}.log", "w+b")
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), out, cmd))
    rec: dict = {"server": "iscsi-perf", "cmd": shlex.join(procs[0][2])}

    def watchdog():
        for proc, _, _ in procs:
            if proc.returncode is None:
                proc.kill()
    timer = threading.Timer(secs + 60, watchdog)  # iscsi-perf stuck on a stalled target
    timer.start()
    total = 0.0
    cpu = 0.0
    for proc, out, cmd in procs:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            proc.wait()
            usage = None
        except BaseException:
            for other, _, _ in procs:  # interrupted: stop the iscsi-perf processes we started
                if other.returncode is None:
                    other.kill()
                    other.wait()
            raise
        cpu += (usage.ru_utime + usage.ru_stime) if usage else 0.0
        out.seek(0)
        text = out.read().decode(errors="replace")
        out.close()
        iops = parse_iscsi_perf(text)
        if proc.returncode != 0 or iops is None:
            rec["error"] = f"`{shlex.join(cmd)}` exited {proc.returncode}: {text.strip()[-300:]}"
            continue
        total += iops
    timer.cancel()
    if "error" not in rec:
        rec["iops"] = total
        rec["ios"] = int(total * secs)
        rec["client_cpu_s"] = cpu
        rec["cpu_ms_per_1k_io"] = cpu * 1e6 / rec["ios"] if rec["ios"] else None
    return rec


# MARK: - iscsi-nbd binary


# The project's one release build (scripts/package.sh, scripts/demo.sh): the Swift runtime linked statically.
RELEASE_FLAGS = ["-c", "release", "--static-swift-stdlib"]


def bin_path(swift: str, release: bool) -> Path | None:
    cmd = [swift, "build", *(RELEASE_FLAGS if release else []), "--show-bin-path"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not p.stdout.strip():
        return None
    return Path(p.stdout.strip().splitlines()[-1]) / "iscsi-nbd"


def stale_warning(binary: Path) -> str | None:
    """A note when some file under Sources/ is newer than the binary (the harness never rebuilds it)."""
    try:
        built = binary.stat().st_mtime
        newer = [f for f in (REPO / "Sources").rglob("*.swift") if f.stat().st_mtime > built]
    except OSError:
        return None
    if newer:
        return (f"{binary} is older than {len(newer)} source file(s) (e.g. {newer[0].relative_to(REPO)}): "
                "it may be stale; rebuild it or pass --iscsi-nbd")
    return None


def locate_iscsi_nbd(args, outdir: Path, notes: list[str]) -> tuple[str | None, str | None]:
    """Returns (binary, problem). Default: the release build, built when missing (unless --no-build).
    --smoke takes an existing debug build when there is no release build (its numbers do not matter),
    which spares CI a release build."""
    if args.iscsi_nbd:
        b = Path(args.iscsi_nbd)
        if not (b.is_file() and os.access(b, os.X_OK)):
            return None, f"--iscsi-nbd {b} is not an executable file"
        return str(b.resolve()), None
    swift = shutil.which("swift")
    if swift is None:
        return None, "swift not on PATH: cannot find or build the release iscsi-nbd (pass --iscsi-nbd BIN)"
    binary = bin_path(swift, release=True)
    if binary is None:
        return None, "`swift build -c release --static-swift-stdlib --show-bin-path` failed (pass --iscsi-nbd BIN)"
    if not binary.is_file() and args.smoke:
        debug = bin_path(swift, release=False)
        if debug is not None and debug.is_file():
            notes.append(f"smoke run with the debug build {debug} (no release build present)")
            binary = debug
    if binary.is_file():
        warning = stale_warning(binary)
        if warning:
            notes.append(warning)
            log("WARNING: " + warning)
        return str(binary), None
    if args.no_build:
        return None, f"{binary} does not exist and --no-build was given"
    log(f"{binary} missing: building it (swift build {' '.join(RELEASE_FLAGS)} --product iscsi-nbd; log in build.log); "
        "this can take many minutes")
    with open(outdir / "build.log", "wb") as out:
        b = subprocess.run([swift, "build", *RELEASE_FLAGS, "--product", "iscsi-nbd"], cwd=REPO,
                           stdout=out, stderr=subprocess.STDOUT)
    if b.returncode != 0 or not binary.is_file():
        return None, f"release build of iscsi-nbd failed (status {b.returncode}); log tail:\n{tail(outdir / 'build.log')}"
    return str(binary), None


# MARK: - Environment description


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = proc_meminfo_total()
    return {"hostname": platform.node(), "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
            "mem_total_mib": mem, "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "cpuidle": cpuidle_info()}


def cpuidle_info() -> str:
    """How an idle CPU waits: in a VM, a halted vCPU costs a VM exit to wake, which dominates QD1 latency;
    the haltpoll driver's guest_halt_poll_ns is how long it spins first (0: it halts at once)."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None
    driver = read("/sys/devices/system/cpu/cpuidle/current_driver") or "none"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return f"cpuidle driver {driver}" + (f", guest_halt_poll_ns {poll}" if poll is not None else "")


def proc_meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def versions(iscsi_nbd: str | None) -> dict:
    v = {
        "qemu-nbd": first_line(["qemu-nbd", "--version"]),
        "tgtd": first_line(["tgtd", "--version"]),
        "fio": first_line(["fio", "--version"]),
        "libiscsi (libiscsi-bin)": dpkg_version("libiscsi-bin"),
        "libnbd": dpkg_version("libnbd0"),
        "qemu-block-extra": dpkg_version("qemu-block-extra"),
    }
    if iscsi_nbd:
        version = first_line([iscsi_nbd, "--version"])
        if version != "unknown":
            v["iscsi-nbd"] = version
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    v["checkout running the harness (git describe)"] = git.stdout.strip() if git.returncode == 0 else "unknown"
    return v


# MARK: - Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Jobs:\n" + "\n".join(f"  {j.name:26} {j.describe()}" for j in FULL_JOBS))
    p.add_argument("--smoke", action="store_true",
                   help="CI smoke (~10 s of I/O): jobs %s, 2 s each, RAM LUN only, no ratio checks" % ",".join(SMOKE_JOBS))
    p.add_argument("--runtime", type=float, help="seconds per fio job (default 3; smoke 2)")
    p.add_argument("--ramp", type=float, default=0.0, help="fio ramp_time seconds, excluded from IOPS and CPU (default 0)")
    p.add_argument("--warmup", type=float, help="unmeasured 4k randread seconds per server before timing (default 1; smoke 0)")
    p.add_argument("--repeat", type=int, help="run the whole matrix N times; medians are reported (default 3; smoke 1)")
    p.add_argument("--jobs", help="comma-separated job names or globs (default: all; see below)")
    p.add_argument("--luns", help="comma-separated LUNs: ram,null (default both; smoke: ram)")
    p.add_argument("--lun-size-mib", type=int, default=256, help="RAM LUN size in MiB (default 256)")
    p.add_argument("--block-size", type=int, default=512, choices=[512, 4096], help="LUN logical block size (default 512)")
    p.add_argument("--servers", default="qemu-nbd,iscsi-nbd", help="which NBD servers to run (default qemu-nbd,iscsi-nbd)")
    p.add_argument("--qemu-only", action="store_true", help="same as --servers qemu-nbd")
    p.add_argument("--iscsi-nbd", metavar="BIN", help="iscsi-nbd binary (default: the release build, built when missing)")
    p.add_argument("--iscsi-nbd-args", default="", help="extra arguments for `iscsi-nbd serve`; use the = form: --iscsi-nbd-args='--threads 2'")
    p.add_argument("--no-build", action="store_true", help="never build iscsi-nbd; fail its side when the binary is missing")
    p.add_argument("--qemu-shared", type=int, default=8, help="qemu-nbd --shared (default 8)")
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix", help="NBD transport (default unix)")
    p.add_argument("--calibrate", action="store_true",
                   help="A/A noise floor: a second qemu-nbd takes iscsi-nbd's place, so every ratio should be 1.0x")
    p.add_argument("--aa", action="store_true",
                   help=f"also run a second qemu-nbd ({AA_CONTROL}) in every job: its ratio to qemu-nbd is the "
                        "noise floor measured in the same run, shown next to each target (1.5x the time)")
    p.add_argument("--baseline", metavar="BIN",
                   help=f"also run this iscsi-nbd binary ({BASELINE}, same --iscsi-nbd-args) in every job: the "
                        "report's 'vs base' columns are iscsi-nbd / baseline paired within each repeat (A/B of a "
                        "change in one run, instead of comparing ratios from two runs)")
    p.add_argument("--metrics-ab", action="store_true",
                   help=f"the cost of metrics: iscsi-nbd serves with --metrics-socket, and the same binary without "
                        f"metrics runs as {BASELINE} in every job; the 'vs base' columns are metrics on / off")
    p.add_argument("--scrape", type=float, default=0, metavar="SECONDS",
                   help="with --metrics-ab: GET /metrics from iscsi-nbd every SECONDS during the whole run")
    p.add_argument("--no-iscsi-perf", action="store_true", help="skip the iscsi-perf ceiling runs")
    p.add_argument("--results", metavar="DIR", help="results folder (default <repo>/results/bench-<timestamp>)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target from issue 6 is missed (not with --smoke)")
    p.add_argument("--profile", nargs="?", const=PROFILE_MISSED, metavar="JOBS",
                   help="after the timed repeats of a LUN, run jobs once more per server under `perf record -a -g` "
                        "and add where the time goes to the report: without JOBS, every job behind a target "
                        "missed on that LUN; else these jobs (names or globs, comma-separated)")
    p.add_argument("--awake", action="store_true",
                   help="run a SCHED_IDLE busy loop on every CPU so no CPU ever halts: in a VM whose idle vCPUs "
                        "halt at once, this shows how much of QD1 latency is waking a halted vCPU")
    p.add_argument("--list-jobs", action="store_true", help="print the job matrix and exit")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 0.0 if args.smoke else 1.0
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.repeat < 1 or (args.runtime is not None and args.runtime <= 0) or args.lun_size_mib < 16:
        p.error("--repeat >= 1, --runtime > 0 and --lun-size-mib >= 16 required")
    return args


def select_jobs(args) -> list[Job]:
    if args.jobs:
        return match_jobs(args.jobs)
    if args.smoke:
        return match_jobs(",".join(SMOKE_JOBS))
    return list(FULL_JOBS)


def match_jobs(patterns: str) -> list[Job]:
    pats = [s.strip() for s in patterns.split(",") if s.strip()]
    jobs = [j for j in FULL_JOBS if any(fnmatch.fnmatch(j.name, pat) for pat in pats)]
    if not jobs:
        raise SystemExit(f"bench: no job matches {patterns!r}; try --list-jobs")
    return jobs


def start_spinners() -> list[subprocess.Popen]:
    """One SCHED_IDLE busy loop per CPU (`--awake`). SCHED_IDLE tasks run only when nothing else wants
    the CPU and the scheduler treats their CPU as idle when placing a woken task, so they change when a
    CPU halts, not who gets it."""
    procs = []
    for cpu in sorted(os.sched_getaffinity(0)):
        procs.append(subprocess.Popen(["chrt", "--idle", "0", "taskset", "-c", str(cpu), "sh", "-c", "while :; do :; done"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def missed_jobs(results: dict, lun: str, jobs: list[Job]) -> list[Job]:
    """The jobs behind the issue 6 targets missed on `lun` in the runs so far, in matrix order."""
    names = {j for t in report.summarize(results)["targets"] if t["lun"] == lun and t["status"] == "MISS"
             for j in t.get("jobs", [])}
    return [j for j in jobs if j.name in names]


def profile_run(job: Job, server: Server, lun: str, runtime: float, outdir: Path, target_pid: int | None) -> dict:
    """One untimed fio run of `job` against `server` under a system-wide perf recording."""
    rec: dict = {"lun": lun, "job": job.name, "server": server.name}
    data = outdir / "perf" / f"{lun}-{job.name}-{server.name}.data"
    data.parent.mkdir(exist_ok=True)
    perf = perfprofile.start_recording(data, runtime + 0.5)
    try:
        time.sleep(0.3)  # perf is sampling before fio starts
        fio = run_fio(job, server, runtime, 0.0, None, outdir / "perf" / f"{lun}-{job.name}-{server.name}.json",
                      target_pid=target_pid)
        _, err = perf.communicate(timeout=runtime + 120)
    except BaseException:
        perf.kill()
        perf.wait()
        raise
    if "error" in fio:
        rec["error"] = f"fio: {fio['error']}"
        return rec
    if perf.returncode != 0:
        rec["error"] = f"perf record exited {perf.returncode}: {(err or '').strip()[-200:]}"
        return rec
    rec.update(iops=fio.get("iops"), cpu_ms_per_1k_io=fio.get("cpu_ms_per_1k_io"), data=str(data))
    binary = server.binary if isinstance(server, ISCSINBD) else "qemu-nbd"
    try:
        rec.update(perfprofile.analyse(data, server.pid, binary, perfprofile.thread_names(server.pid)))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        rec["error"] = f"perf report: {e}"
    return rec


def check_tools(need: list[str]) -> None:
    missing = [t for t in need if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        raise HarnessError("missing tools: " + ", ".join(missing) +
                           " (apt-get install -y tgt fio qemu-utils qemu-block-extra libiscsi-bin libnbd-bin)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list_jobs:
        for j in FULL_JOBS:
            print(f"{j.name:26} {j.describe()}{'  (+ iscsi-perf)' if j.perf else ''}")
        return 0
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    runtime = args.runtime if args.runtime is not None else (2.0 if args.smoke else 3.0)
    jobs = select_jobs(args)
    profile_jobs = match_jobs(args.profile) if args.profile and args.profile != PROFILE_MISSED else []
    luns = [s.strip() for s in (args.luns or ("ram" if args.smoke else "ram,null")).split(",") if s.strip()]
    if any(l not in ("ram", "null") for l in luns):
        raise SystemExit("bench: --luns takes ram and/or null")
    servers_wanted = ["qemu-nbd"] if args.qemu_only else [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.calibrate:
        servers_wanted = ["qemu-nbd", "iscsi-nbd"]
    if any(s not in ("qemu-nbd", "iscsi-nbd") for s in servers_wanted) or not servers_wanted:
        raise SystemExit("bench: --servers takes qemu-nbd and/or iscsi-nbd")
    if args.aa and "qemu-nbd" in servers_wanted:
        servers_wanted.insert(servers_wanted.index("qemu-nbd") + 1, AA_CONTROL)
    baseline_bin = None
    if args.baseline:
        b = Path(args.baseline)
        if not (b.is_file() and os.access(b, os.X_OK)) or args.calibrate or "iscsi-nbd" not in servers_wanted:
            raise SystemExit("bench: --baseline needs an executable iscsi-nbd binary and the iscsi-nbd server "
                             "(not with --calibrate)")
        baseline_bin = str(b.resolve())
        servers_wanted.append(BASELINE)
    if args.metrics_ab:
        if args.baseline or args.calibrate or "iscsi-nbd" not in servers_wanted:
            raise SystemExit("bench: --metrics-ab needs the iscsi-nbd server (not with --baseline or --calibrate)")
        servers_wanted.append(BASELINE)  # the same binary, metrics off (set once the binary is located)
    if args.scrape and not args.metrics_ab:
        raise SystemExit("bench: --scrape goes with --metrics-ab")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.results) if args.results else REPO / "results" / f"bench-{stamp}"
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "fio").mkdir(exist_ok=True)
    log(f"results in {outdir}")

    results: dict = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "scripts/bench.sh " + shlex.join(argv),
        "mode": "smoke" if args.smoke else "full",
        "calibration": args.calibrate,
        "aa_control": AA_CONTROL if args.aa else None,
        "baseline": baseline_bin,
        "config": {"awake": args.awake, "runtime_s": runtime, "ramp_s": args.ramp, "warmup_s": args.warmup, "repeat": args.repeat, "luns": luns,
                   "lun_size_mib": args.lun_size_mib, "block_size": args.block_size,
                   "transport": args.transport, "qemu_shared": args.qemu_shared,
                   "iscsi_nbd_args": args.iscsi_nbd_args, "jobs": [j.__dict__ | {"describe": j.describe()} for j in jobs]},
        "machine": machine_info(),
        "loadavg_start": Path("/proc/loadavg").read_text().strip(),
        "problems": [],  # human-readable, shown at the top of the report
        "notes": [],  # non-fatal remarks (debug or possibly stale binary)
        "servers": {},
        "cross_check": {},
        "runs": [],
        "profiles": [],
    }
    if args.profile:
        problem = perfprofile.available()
        if problem:
            results["profile_problem"] = problem  # the report says why; the timed results are unaffected
            log("WARNING: no profiles: " + problem)
            profile_jobs = []
            args.profile = None
    status = 0
    iscsi_nbd_bin = None
    if "iscsi-nbd" in servers_wanted and not args.calibrate:
        iscsi_nbd_bin, problem = locate_iscsi_nbd(args, outdir, results["notes"])
        if problem:
            results["problems"].append(f"iscsi-nbd side skipped: {problem}")
            log("WARNING: iscsi-nbd side skipped: " + problem)
            status = 2
    if iscsi_nbd_bin and "/debug/" in iscsi_nbd_bin:
        results["notes"].append(f"{iscsi_nbd_bin} looks like a debug build: its speed, CPU and RSS are not "
                                "representative of the release build")
    if args.metrics_ab:
        baseline_bin = iscsi_nbd_bin
        results["metrics_ab"] = {"scrape_interval_s": args.scrape or None}
    results["versions"] = versions(iscsi_nbd_bin)
    results["iscsi_nbd_binary"] = iscsi_nbd_bin

    tgt = TGTD(outdir)
    spinners: list[subprocess.Popen] = []
    active: list[Server] = []
    interrupted = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        check_tools(["tgtd", "tgtadm", "fio", "nbdinfo", "iscsi-readcapacity16"] + (["qemu-nbd"] if "qemu-nbd" in servers_wanted else []) +
                    ([] if args.no_iscsi_perf else ["iscsi-perf"]))
        if args.awake:
            spinners = start_spinners()
            log(f"--awake: {len(spinners)} idle-priority spinners keep every CPU from halting")
        tgt.start()
        lun_size = args.lun_size_mib * MIB
        lun_ids = tgt.setup(lun_size, args.block_size)
        sizes = {"ram": lun_size, "null": None}
        for lun_name in luns:
            url = tgt.url(lun_ids[lun_name])
            expected = sizes[lun_name]
            if expected is None:
                # tgt picks the null LUN's size itself; ask the target (-s prints the size in bytes).
                p = subprocess.run(["iscsi-readcapacity16", "-s", url], capture_output=True, text=True, timeout=30)
                expected = int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip().isdigit() else None
            servers: list[Server] = []
            for name in servers_wanted:
                if name in ("qemu-nbd", AA_CONTROL):
                    servers.append(QemuNBD(name, outdir, args.transport, shared=args.qemu_shared))
                elif args.calibrate:
                    # A/A run: the same qemu-nbd command in iscsi-nbd's slot measures the noise floor.
                    servers.append(QemuNBD(name, outdir, args.transport, shared=args.qemu_shared))
                elif iscsi_nbd_bin:
                    extra = shlex.split(args.iscsi_nbd_args)
                    if args.metrics_ab and name == "iscsi-nbd":
                        extra += ["--metrics-socket", metrics_socket(lun_name)]
                    servers.append(ISCSINBD(name, outdir, args.transport,
                                            binary=baseline_bin if name == BASELINE else iscsi_nbd_bin, extra=extra))
            running: list[Server] = []
            for s in servers:
                active.append(s)
                if s.start(url, lun_name, expected):
                    running.append(s)
                else:
                    msg = f"{s.name} could not serve the {lun_name} LUN: {s.error}"
                    results["problems"].append(msg)
                    log("ERROR: " + msg)
                    status = max(status, 2 if s.name == "iscsi-nbd" else 1)
            if lun_name == "ram" and running:
                problem = cross_check(running, lun_size, outdir)
                if problem:
                    results["problems"].append(f"{lun_name} LUN: {problem}")
                    log("ERROR: " + problem)
                    status = max(status, 2 if any(s.name == "iscsi-nbd" for s in running) else 1)
                else:
                    log("data cross-check passed: " + ", ".join(s.name for s in running) + " see each other's writes")
                results["cross_check"][lun_name] = problem or ("passed: " + ", ".join(s.name for s in running) +
                                                               " read back each other's 1 MiB writes")
            if args.warmup > 0:
                # Connections, caches and page faults settle before anything is timed.
                for s in running:
                    try:
                        w = subprocess.run(["fio", "--name=warmup", "--ioengine=nbd", f"--uri={s.uri}",
                                            "--rw=randread", "--bs=4k", "--iodepth=32", "--time_based",
                                            f"--runtime={args.warmup}", "--output-format=terse"],
                                           capture_output=True, text=True, timeout=args.warmup + 60)
                        failure = None if w.returncode == 0 else f"fio exited {w.returncode}: {w.stderr.strip()[-300:]}"
                    except subprocess.TimeoutExpired:
                        failure = f"fio hung for {args.warmup + 60:.0f}s"
                    if failure:
                        results["problems"].append(f"{lun_name} LUN warm-up on {s.name}: {failure}")
                        log(f"ERROR: warm-up on {s.name}: {failure}")
                        status = max(status, 2 if s.name == "iscsi-nbd" else 1)
            size_arg = None  # fio uses the export size
            scraper = Scraper(metrics_socket(lun_name), args.scrape) if args.metrics_ab and args.scrape else None
            for rep in range(args.repeat):
                for ji, job in enumerate(jobs):
                    order = run_order(running, rep * len(jobs) + ji)
                    for s in order:
                        if not s.alive():
                            continue
                        path = outdir / "fio" / f"{lun_name}-{job.name}-{s.name}-r{rep}.json"
                        rec = run_fio(job, s, runtime, args.ramp, size_arg, path,
                                      target_pid=tgt.proc.pid if tgt.proc else None)
                        rec.update(lun=lun_name, job=job.name, repeat=rep)
                        results["runs"].append(rec)
                        log_rec(rec)
                        if "error" in rec:
                            results["problems"].append(f"{lun_name}/{job.name} on {s.name}: {rec['error']}")
                            status = max(status, 2 if s.name == "iscsi-nbd" else 1)
                    if job.perf and not args.no_iscsi_perf:
                        rec = run_iscsi_perf(job, url, args.block_size, runtime, outdir,
                                             f"{lun_name}-{job.name}-r{rep}")
                        rec.update(lun=lun_name, job=job.name, repeat=rep)
                        results["runs"].append(rec)
                        log_rec(rec)
                        if "error" in rec:
                            results["problems"].append(f"{lun_name}/{job.name} iscsi-perf: {rec['error']}")
                            status = max(status, 1)
            if scraper:
                results["metrics_ab"][lun_name] = scraper.stop()
                log(f"{lun_name} LUN: {results['metrics_ab'][lun_name]}")
                if results["metrics_ab"][lun_name]["failed"]:
                    results["problems"].append(f"{lun_name} LUN: metrics scrapes failed: {results['metrics_ab'][lun_name]}")
                    status = max(status, 2)
            for job in (missed_jobs(results, lun_name, jobs) if args.profile == PROFILE_MISSED else profile_jobs):
                for s in running:
                    if not s.alive():
                        continue
                    rec = profile_run(job, s, lun_name, runtime, outdir, tgt.proc.pid if tgt.proc else None)
                    results["profiles"].append(rec)
                    if "error" in rec:
                        log(f"{lun_name}/{job.name} {s.name}: profile failed: {rec['error']}")
                    else:
                        log(f"{lun_name}/{job.name} {s.name}: profiled ({rec['iops']:.0f} IOPS under perf; "
                            f"server {rec['machine']['server']:.0f} % of the machine, kernel "
                            f"{rec['categories']['kernel']:.0f} % of the server)")
            for s in servers:
                if s.proc is None:
                    continue
                died = s.proc.poll() is not None
                s.stop()
                info = {"pid": s.proc.pid, "exit_status": s.exit_status, "startup_rss_kib": s.startup_rss_kib,
                        "died_early": died, "command": shlex.join(s.proc.args)}
                results["servers"][f"{s.name}/{lun_name}"] = info
                if s.name == "iscsi-nbd" and s.exit_status != 0 and not s.error and not died:
                    results["problems"].append(
                        f"iscsi-nbd ({lun_name} LUN) exited with status {s.exit_status} on SIGTERM (expected 0)")
                    status = max(status, 2)
                active.remove(s)
    except HarnessError as e:
        results["problems"].append(f"harness: {e}")
        log(f"ERROR: {e}")
        status = 1
    except (OSError, subprocess.SubprocessError) as e:
        # e.g. /dev/shm full, a tool that hangs: still clean up and write what we have.
        results["problems"].append(f"harness: {type(e).__name__}: {e}")
        log(f"ERROR: {type(e).__name__}: {e}")
        status = 1
    except KeyboardInterrupt as e:
        results["problems"].append(f"interrupted ({e or 'SIGINT'})")
        log("interrupted: cleaning up")
        interrupted = True
        status = 1
    finally:
        for s in active:
            s.stop()
        tgt.stop()
        for sp in spinners:
            stop_pid(sp, "spinner", grace=1.0)

    results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    results["loadavg_end"] = Path("/proc/loadavg").read_text().strip()
    summary = report.summarize(results)
    results["summary"] = summary
    (outdir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = report.markdown(results)
    (outdir / "report.md").write_text(md)
    chart_problem = report.chart(results, outdir / "chart.png")
    if chart_problem:
        log("WARNING: " + chart_problem)
        results["problems"].append(chart_problem)
        (outdir / "report.md").write_text(report.markdown(results))
        status = max(status, 1)
    print()
    print(report.console_table(results))
    print(f"\nreport: {outdir / 'report.md'}\nchart:  {outdir / 'chart.png'}\njson:   {outdir / 'results.json'}")
    if results["problems"]:
        print("\nPROBLEMS:")
        for p in results["problems"]:
            print("  - " + p.replace("\n", "\n    "))
    if interrupted:
        return 130
    if status == 0 and args.strict and not args.smoke and not args.calibrate and summary.get("targets_missed"):
        print(f"\n--strict: {len(summary['targets_missed'])} target(s) missed")
        return 3
    return status


def log_rec(rec: dict) -> None:
    if "error" in rec:
        log(f"{rec['lun']}/{rec['job']} {rec['server']}: ERROR {rec['error']}")
        return
    parts = [f"{rec['iops']:.0f} IOPS"]
    if rec.get("lat_mean_us") is not None:
        parts.append(f"lat {rec['lat_mean_us']:.0f} us")
    if rec.get("cpu_ms_per_1k_io") is not None:
        parts.append(f"cpu {rec['cpu_ms_per_1k_io']:.1f} ms/1k IO")
    if rec.get("peak_rss_kib") is not None:
        parts.append(f"peak RSS {rec['peak_rss_kib'] / 1024:.1f} MiB")
    log(f"{rec['lun']}/{rec['job']} r{rec['repeat']} {rec['server']}: " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where the time goes: perf profiles taken by the benchmark harness (`bench.sh --profile`).

Issue 6 asks that where a target is missed the report shows a profile, not a guess. After the timed
repeats, each profiled job runs once more per server under `perf record -a -g -e cpu-clock` (this VM
has no hardware counters; cpu-clock samples every CPU at a fixed rate, idle included, so the samples
are a breakdown of the machine's two cores). Two reports are read from one recording:

- the machine: samples by thread name, grouped into the NBD server, tgtd, fio, idle and other;
- the server alone (`--pid`, relative percentages): samples by DSO, grouped into kernel, the server's
  own binary, its language runtime (Swift runtime and Foundation / glib), the iSCSI library (libiscsi
  inside qemu-nbd), libc and other; plus the heaviest symbols (Swift names demangled).

Profiled runs are not timed runs: perf costs a few percent, and their IOPS are shown only to say how
much work the samples describe. This module holds the parsing and grouping (unit-tested in
test_bench.py) and the recording helpers; bench.py decides when to call them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# "    71.83%  [kernel.kallsyms]  [k] read_zero"
SYMBOL_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")
# "    40.00%  tgtd" / "    12.00%  NIO-ELT-0-#0"
COMM_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(.*?)\s*$")

SERVER_CATEGORIES = ["kernel", "server binary", "runtime", "libiscsi", "libc", "other"]
MACHINE_GROUPS = ["server", "tgtd", "fio", "idle", "other"]


def parse_symbol_report(text: str) -> list[tuple[float, str, str, str]]:
    """Rows of `perf report --sort dso,sym --stdio -q -g none`: (percent, dso, kind, symbol),
    kind "k" for kernel and "." for user space."""
    rows = []
    for line in text.splitlines():
        m = SYMBOL_LINE.match(line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return rows


def parse_comm_report(text: str) -> list[tuple[float, str]]:
    """Rows of `perf report --sort comm --stdio -q`: (percent, thread name)."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = COMM_LINE.match(line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def dso_category(dso: str, kind: str, server_binary: str) -> str:
    """Which part of a server a sample's DSO belongs to."""
    name = Path(dso).name
    if kind == "k" or (name.startswith("[") and name not in ("[unknown]", "[vdso]")):
        return "kernel"  # [kernel.kallsyms], kernel modules such as [nf_tables]
    if name == Path(server_binary).name:
        return "server binary"
    if name.startswith(("libswift", "libFoundation", "lib_FoundationICU", "libdispatch", "libBlocksRuntime",
                        "libglib-", "libgobject-", "libgio-", "libstdc++")):
        return "runtime"
    if name.startswith("libiscsi"):
        return "libiscsi"
    if name.startswith(("libc.so", "libc-", "libm.so", "ld-linux", "libpthread")):
        return "libc"
    return "other"


def machine_group(comm: str, server_comms: set[str]) -> str:
    """Which process a thread name belongs to (tgtd's and fio's threads share their process's name)."""
    if comm in server_comms:
        return "server"
    if comm == "swapper" or comm.startswith("swapper/"):
        return "idle"
    if comm.startswith("tgtd"):
        return "tgtd"
    if comm.startswith("fio"):
        return "fio"
    return "other"


def summarize_server(rows: list[tuple[float, str, str, str]], server_binary: str,
                     top: int = 12) -> dict:
    """Category shares and the heaviest symbols of one server's samples (percentages relative to it)."""
    cats = {c: 0.0 for c in SERVER_CATEGORIES}
    for pct, dso, kind, _ in rows:
        cats[dso_category(dso, kind, server_binary)] += pct
    heaviest = sorted(rows, key=lambda r: -r[0])[:top]
    return {
        "categories": {c: round(v, 2) for c, v in cats.items()},
        "top": [{"percent": pct, "category": dso_category(dso, kind, server_binary), "dso": Path(dso).name,
                 "symbol": sym} for pct, dso, kind, sym in heaviest],
    }


def summarize_machine(rows: list[tuple[float, str]], server_comms: set[str]) -> dict[str, float]:
    groups = {g: 0.0 for g in MACHINE_GROUPS}
    for pct, comm in rows:
        groups[machine_group(comm, server_comms)] += pct
    return {g: round(v, 2) for g, v in groups.items()}


def thread_names(pid: int) -> set[str]:
    """The names of a running process's threads (NIO names its event loop threads NIO-ELT-...)."""
    names = set()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:
            pass
    return names


def available() -> str | None:
    """None when perf can record here, else why not."""
    if shutil.which("perf") is None:
        return "perf is not installed (apt-get install -y linux-perf)"
    try:
        p = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"perf cannot run: {e}"
    if p.returncode != 0:
        return f"perf record failed: {(p.stderr or p.stdout).strip()[-200:]}"
    return None


def start_recording(out: Path, seconds: float, frequency: int = 999) -> subprocess.Popen:
    """System-wide cpu-clock recording with call graphs, for `seconds`."""
    return subprocess.Popen(["perf", "record", "-a", "-g", "-e", "cpu-clock", "-F", str(frequency),
                             "-o", str(out), "--", "sleep", f"{seconds:.2f}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def demangle(symbols: list[str]) -> list[str]:
    """Swift symbols in a readable form (`swift demangle --simplified`); unchanged when unavailable."""
    tool = shutil.which("swift-demangle")
    if not tool or not any(s.startswith(("$s", "_$s")) for s in symbols):
        return symbols
    try:
        p = subprocess.run([tool, "--simplified"], input="\n".join(symbols) + "\n", capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return symbols
    out = p.stdout.splitlines()
    return out if p.returncode == 0 and len(out) == len(symbols) else symbols


def shorten(symbol: str, width: int = 110) -> str:
    return symbol if len(symbol) <= width else symbol[: width - 3] + "..."


def analyse(data: Path, server_pid: int, server_binary: str, server_comms: set[str]) -> dict:
    """Both reports of one recording."""
    def report(*extra: str) -> str:
        p = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-q", "--no-children", *extra],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"perf report {' '.join(extra)}: {p.stderr.strip()[-300:]}")
        return p.stdout

    machine = summarize_machine(parse_comm_report(report("--sort", "comm")), server_comms)
    rows = parse_symbol_report(report("--pid", str(server_pid), "--percentage", "relative",
                                      "--sort", "dso,sym", "-g", "none"))
    server = summarize_server(rows, server_binary)
    names = demangle([t["symbol"] for t in server["top"]])
    for t, name in zip(server["top"], names):
        t["symbol"] = shorten(name)
    return {"machine": machine, **server}

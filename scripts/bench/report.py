#!/usr/bin/python3
"""Summary, markdown report, console table and PNG chart for scripts/bench.sh.

Also usable alone to rebuild a report from a results folder:
    /usr/bin/python3 scripts/bench/report.py results/bench-<timestamp>/results.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

OURS, QEMU, PERF, AA, BASE = "iscsi-nbd", "qemu-nbd", "iscsi-perf", "qemu-nbd-b", "iscsi-nbd-base"
RSS_LIMIT_MIB = 40


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results: dict) -> dict:
    """Medians per (LUN, job, server) and ratios per (LUN, job).

    Ratios pair the two servers within one repeat (they ran back to back) and take the median of those
    paired ratios, which cancels slow drifts of a shared machine better than a ratio of medians."""
    ok = [r for r in results.get("runs", []) if "error" not in r]
    luns = list(dict.fromkeys(r["lun"] for r in results.get("runs", [])))
    jobs = list(dict.fromkeys(r["job"] for r in results.get("runs", [])))
    per: dict = {}
    for lun in luns:
        per[lun] = {}
        for job in jobs:
            entry: dict = {"servers": {}, "ratios": {}}
            by_server: dict = {}
            for r in ok:
                if r["lun"] == lun and r["job"] == job:
                    by_server.setdefault(r["server"], []).append(r)
            if not by_server:
                continue
            for server, rs in by_server.items():
                iops = [r["iops"] for r in rs]
                entry["servers"][server] = {
                    "n": len(rs),
                    "iops": _median(iops),
                    "iops_min": min(iops),
                    "iops_max": max(iops),
                    "bw_mib_s": _median([r.get("bw_bytes", 0) / 2**20 for r in rs]) if server != PERF else None,
                    "lat_mean_us": _median([r.get("lat_mean_us") for r in rs]),
                    "clat_p99_us": _median([r.get("clat_p99_us") for r in rs]),
                    "cpu_ms_per_1k_io": _median([r.get("cpu_ms_per_1k_io") for r in rs]),
                    "peak_rss_mib": max((r["peak_rss_kib"] / 1024 for r in rs if r.get("peak_rss_kib")), default=None),
                    "client_cpu_pct": _median([r.get("client_cpu_pct") for r in rs]),
                    "target_cpu_ms_per_1k_io": _median([r.get("target_cpu_ms_per_1k_io") for r in rs]),
                    "loadavg": _median([r.get("loadavg_before") for r in rs]),
                }

            def paired(metric: str, num: str, den: str):
                reps = {}
                for r in ok:
                    if r["lun"] == lun and r["job"] == job and r["server"] in (num, den) and r.get(metric):
                        reps.setdefault(r["repeat"], {})[r["server"]] = r[metric]
                vals = [v[num] / v[den] for _, v in sorted(reps.items()) if num in v and den in v and v[den]]
                return vals

            samples = {
                "iops_vs_qemu": paired("iops", OURS, QEMU),
                "lat_vs_qemu": paired("lat_mean_us", OURS, QEMU),
                "cpu_vs_qemu": paired("cpu_ms_per_1k_io", OURS, QEMU),
                "iops_vs_perf": paired("iops", OURS, PERF),
                "qemu_iops_vs_perf": paired("iops", QEMU, PERF),
                # --aa: the same ratios between two identical qemu-nbd processes = noise floor.
                "aa_iops": paired("iops", AA, QEMU),
                "aa_lat": paired("lat_mean_us", AA, QEMU),
                "aa_cpu": paired("cpu_ms_per_1k_io", AA, QEMU),
                # --baseline: this build against another iscsi-nbd build, paired within each repeat.
                "base_iops": paired("iops", OURS, BASE),
                "base_lat": paired("lat_mean_us", OURS, BASE),
                "base_cpu": paired("cpu_ms_per_1k_io", OURS, BASE),
            }
            entry["ratios"] = {k: _median(v) for k, v in samples.items()}
            entry["ratio_samples"] = samples
            per[lun][job] = entry
    targets = evaluate_targets(per)
    return {"per_lun": per, "targets": targets,
            "targets_missed": [t["name"] + f" ({t['lun']})" for t in targets if t["status"] == "MISS"]}


def evaluate_targets(per: dict) -> list[dict]:
    """Issue 6 targets, one row per LUN; status PASS, MISS or n/a (no data)."""
    out = []

    def ratio(lun, job, key):
        return per.get(lun, {}).get(job, {}).get("ratios", {}).get(key)

    def shown(lun, job, key, extra=""):
        """The median ratio, with the per-repeat range when there are several repeats."""
        v = ratio(lun, job, key)
        if v is None:
            return "-"
        xs = per[lun][job].get("ratio_samples", {}).get(key, [])
        rng = f" (repeats {min(xs):.2f}..{max(xs):.2f})" if len(xs) > 1 else ""
        aa_key = {"iops_vs_qemu": "aa_iops", "lat_vs_qemu": "aa_lat"}.get(key)
        aa = ratio(lun, job, aa_key) if aa_key else None
        return f"{v:.2f}x{rng}{extra}" + (f"; A/A {aa:.2f}x" if aa is not None else "")

    def row(lun, name, value, ok, shown, jobs):
        """`jobs`: the jobs whose measurements decide the target (the ones to profile when it is missed)."""
        out.append({"lun": lun, "name": name, "value": value, "shown": shown, "jobs": jobs,
                    "status": "n/a" if value is None else ("PASS" if ok else "MISS")})

    for lun, jobs in per.items():
        for job, label, limit in (("4k-randread-qd32", "4k QD32 randread IOPS >= 1.5x qemu-nbd", 1.5),
                                  ("4k-randwrite-qd32", "4k QD32 randwrite IOPS >= 1.5x qemu-nbd", 1.5),
                                  ("1m-read-qd8", "1M seq read (QD8) >= 1.3x qemu-nbd", 1.3),
                                  ("1m-write-qd8", "1M seq write (QD8) >= 1.3x qemu-nbd", 1.3)):
            if job in jobs:
                v = ratio(lun, job, "iops_vs_qemu")
                row(lun, label, v, v is not None and v >= limit, shown(lun, job, "iops_vs_qemu"), [job])
        for job, label in (("4k-randread-qd1", "QD1 read latency <= 0.8x qemu-nbd"),
                           ("4k-randwrite-qd1", "QD1 write latency <= 0.8x qemu-nbd")):
            if job in jobs:
                v = ratio(lun, job, "lat_vs_qemu")
                row(lun, label, v, v is not None and v <= 0.8, shown(lun, job, "lat_vs_qemu"), [job])
        for job in jobs:
            if PERF in jobs[job]["servers"]:
                v = ratio(lun, job, "iops_vs_perf")
                q = ratio(lun, job, "qemu_iops_vs_perf")
                row(lun, f"{job}: IOPS within 10% of iscsi-perf", v, v is not None and v >= 0.9,
                    shown(lun, job, "iops_vs_perf", f"; qemu-nbd {q:.2f}x" if q is not None else ""), [job])
        qd128 = [(jobs[j]["servers"].get(OURS, {}).get("peak_rss_mib"), j) for j in jobs if j.endswith("-qd128")]
        qd128 = [(v, j) for v, j in qd128 if v is not None]
        if any(j.endswith("-qd128") for j in jobs):
            v, heaviest = max(qd128) if qd128 else (None, None)
            row(lun, f"peak RSS at QD128 <= {RSS_LIMIT_MIB} MiB", v, v is not None and v <= RSS_LIMIT_MIB,
                f"{v:.1f} MiB" if v is not None else "-", [heaviest] if heaviest else [])
        cpu = [(j, jobs[j]["ratios"].get("cpu_vs_qemu")) for j in jobs]
        cpu = [(j, v) for j, v in cpu if v is not None]
        if jobs:
            worst = max(cpu, key=lambda t: t[1]) if cpu else None
            better = sum(1 for _, v in cpu if v < 1)
            row(lun, "CPU time per I/O < qemu-nbd (every job)", worst[1] if worst else None,
                bool(cpu) and better == len(cpu),
                f"{better}/{len(cpu)} jobs; worst {worst[1]:.2f}x ({worst[0]})" if worst else "-",
                [j for j, v in cpu if v >= 1])
    return out


# MARK: - Formatting


def _f(v, fmt="{:.0f}", none="-"):
    return none if v is None else fmt.format(v)


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def table(results: dict, lun: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows for one LUN; A/A columns appear when the run had the --aa control."""
    per = results.get("summary", {}).get("per_lun", {}).get(lun, {})
    aa = any(e["ratios"].get("aa_iops") is not None for e in per.values())
    base = any(e["ratios"].get("base_iops") is not None for e in per.values())
    headers = ["job", "qemu IOPS", "ours IOPS", "ours/qemu"] + (["A/A"] if aa else []) + (["vs base"] if base else []) + \
        ["iscsi-perf", "ours/perf", "qemu lat us", "ours lat us", "lat ratio"] + (["A/A"] if aa else []) + \
        (["vs base"] if base else []) + \
        ["qemu cpu ms/1kIO", "ours cpu ms/1kIO", "cpu ratio"] + (["A/A"] if aa else []) + (["vs base"] if base else []) + \
        ["qemu RSS MiB", "ours RSS MiB"] + (["base RSS MiB"] if base else [])
    rows = []
    for job, e in per.items():
        s = e["servers"]
        q, o, p, b = s.get(QEMU, {}), s.get(OURS, {}), s.get(PERF, {}), s.get(BASE, {})
        r = e["ratios"]
        rows.append(
            [job, _f(q.get("iops")), _f(o.get("iops")), _ratio(r.get("iops_vs_qemu"))]
            + ([_ratio(r.get("aa_iops"))] if aa else []) + ([_ratio(r.get("base_iops"))] if base else [])
            + [_f(p.get("iops")), _ratio(r.get("iops_vs_perf")),
               _f(q.get("lat_mean_us")), _f(o.get("lat_mean_us")), _ratio(r.get("lat_vs_qemu"))]
            + ([_ratio(r.get("aa_lat"))] if aa else []) + ([_ratio(r.get("base_lat"))] if base else [])
            + [_f(q.get("cpu_ms_per_1k_io"), "{:.1f}"), _f(o.get("cpu_ms_per_1k_io"), "{:.1f}"),
               _ratio(r.get("cpu_vs_qemu"))]
            + ([_ratio(r.get("aa_cpu"))] if aa else []) + ([_ratio(r.get("base_cpu"))] if base else [])
            + [_f(q.get("peak_rss_mib"), "{:.1f}"), _f(o.get("peak_rss_mib"), "{:.1f}")]
            + ([_f(b.get("peak_rss_mib"), "{:.1f}")] if base else []))
    return headers, rows


CALIBRATION_NOTE = ("A/A CALIBRATION RUN (--calibrate): 'ours'/iscsi-nbd is a second qemu-nbd, so every ratio "
                    "should be 1.00x; the spread around 1.00x is this machine's noise floor.")


def console_table(results: dict) -> str:
    lines = [CALIBRATION_NOTE, ""] if results.get("calibration") else []
    for lun in results.get("summary", {}).get("per_lun", {}):
        headers, rows = table(results, lun)
        if not rows:
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines.append(f"== {lun} LUN (ours = iscsi-nbd; medians of {results['config']['repeat']} repeat(s)) ==")
        lines.append("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for r in rows:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        lines.append("")
    targets = results.get("summary", {}).get("targets", [])
    if targets:
        tag = " (informational in smoke mode)" if results.get("mode") == "smoke" else ""
        lines.append(f"== targets (issue 6){tag} ==")
        for t in targets:
            lines.append(f"  [{t['status']:>4}] {t['lun']:4} {t['name']}: {t['shown']}")
    if not lines:
        lines.append("(no successful measurements)")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    m, v, c = results.get("machine", {}), results.get("versions", {}), results.get("config", {})
    out = [f"# iscsi-nbd benchmark ({results.get('mode')}, {results.get('started')})", ""]
    if results.get("calibration"):
        out += ["**" + CALIBRATION_NOTE + "**", ""]
    if results.get("problems"):
        out += ["## Problems", ""] + ["- " + p.replace("\n", "\n  ") for p in results["problems"]] + [""]
    if results.get("notes"):
        out += ["## Notes", ""] + ["- " + n for n in results["notes"]] + [""]
    out += ["## Machine and versions", "",
            f"- Machine: {m.get('nproc')} CPUs, {m.get('cpu_model')}, {m.get('mem_total_mib')} MiB RAM",
            f"- Kernel: {m.get('kernel')} ({m.get('os')}); idle CPUs: {m.get('cpuidle', 'not recorded')}",
            f"- Load average (1/5/15 min) at start: {results.get('loadavg_start')}; at end: {results.get('loadavg_end')}"]
    out += [f"- {k}: {val}" for k, val in v.items()]
    out += [f"- iscsi-nbd binary: {results.get('iscsi_nbd_binary') or 'not used'}", "",
            "## Setup", "",
            f"- Command: `{results.get('command')}`",
            f"- tgtd on 127.0.0.1: `ram` LUN = preallocated {c.get('lun_size_mib')} MiB file in /dev/shm, "
            f"`null` LUN = `--bstype null`; logical block size {c.get('block_size')}.",
            f"- NBD over {c.get('transport')} sockets; qemu-nbd `-t --shared={c.get('qemu_shared')} -f raw iscsi://...` "
            f"(libiscsi); iscsi-nbd `serve` {('with ' + repr(c.get('iscsi_nbd_args'))) if c.get('iscsi_nbd_args') else ''}",
            f"- fio {c.get('runtime_s')} s per job (ramp {c.get('ramp_s')} s), ioengine=nbd (libnbd); "
            f"{c.get('repeat')} repeat(s); the two servers alternate job by job (order flips every job and repeat).",
            "- iscsi-perf (libiscsi) reads the LUN directly with the same queue depth and request size: the ceiling.",
            *(["- `--awake`: a SCHED_IDLE busy loop ran on every CPU, so no CPU halted while idle (not the normal "
               "condition: it removes the cost of waking a halted vCPU)."] if c.get("awake") else []),
            "- CPU = user+sys of the server process (all threads) from /proc/PID/stat around each fio job; "
            "`cpu ms/1kIO` = CPU milliseconds per 1,000 I/Os. RSS = VmHWM from /proc/PID/status, reset before "
            "each job via /proc/PID/clear_refs, so it is the job's peak.",
            "- Latency = fio's mean total latency (submission to completion) per I/O.",
            "- Ratios pair the servers within a repeat and take the median; on a small shared machine only the "
            "ratios are meaningful.",
            ("- A/A columns: a second, identical qemu-nbd (`--aa`) ran in every job; its ratio to qemu-nbd is the "
             "noise floor of this very run. A target met by less than the A/A deviation is not established."
             if results.get("aa_control") else
             "- No A/A control in this run (`--aa` adds one; `--calibrate` measures the noise floor alone)."),
            *([f"- `vs base` columns: a second iscsi-nbd build (`--baseline {results['baseline']}`) ran in every "
               "job; the ratio is this build / that build, paired within each repeat (below 1.00x is better for "
               "latency and CPU, above for IOPS)."] if results.get("baseline") else []),
            *([f"- `vs base` columns (`--metrics-ab`): iscsi-nbd with metrics on (`--metrics-socket`"
               + (f", scraped every {results['metrics_ab']['scrape_interval_s']} s" if results["metrics_ab"].get("scrape_interval_s") else "")
               + ") / the same binary with metrics off, paired within each repeat: the cost of metrics (1.00x: none)."]
              if results.get("metrics_ab") else [])]
    for lun, verdict in results.get("cross_check", {}).items():
        out.append(f"- Data cross-check ({lun} LUN): {verdict}")
    out += ["", "## Jobs", ""] + [f"- `{j['name']}`: {j['describe']}" for j in c.get("jobs", [])] + [""]
    for lun in results.get("summary", {}).get("per_lun", {}):
        headers, rows = table(results, lun)
        if not rows:
            continue
        out += [f"## {lun} LUN", "", "| " + " | ".join(headers) + " |",
                "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
        out += ["Details: tgtd CPU per 1,000 I/Os (the target's cost for the same work), p99 completion "
                "latency, fio client CPU, 1-minute load average before the job.", "",
                "| job | tgtd cpu ms/1kIO qemu | tgtd cpu ms/1kIO ours | p99 us qemu | p99 us ours | fio cpu % qemu | fio cpu % ours | load |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for job, e in results["summary"]["per_lun"][lun].items():
            q, o = e["servers"].get(QEMU, {}), e["servers"].get(OURS, {})
            load = q.get("loadavg") if q.get("loadavg") is not None else o.get("loadavg")
            out.append(f"| {job} | {_f(q.get('target_cpu_ms_per_1k_io'), '{:.1f}')} | "
                       f"{_f(o.get('target_cpu_ms_per_1k_io'), '{:.1f}')} | {_f(q.get('clat_p99_us'))} | "
                       f"{_f(o.get('clat_p99_us'))} | {_f(q.get('client_cpu_pct'), '{:.0f}')} | "
                       f"{_f(o.get('client_cpu_pct'), '{:.0f}')} | {_f(load, '{:.1f}')} |")
        out.append("")
        spread = []
        for job, e in results["summary"]["per_lun"][lun].items():
            for s, d in e["servers"].items():
                if d["n"] > 1:
                    spread.append(f"{job} {s}: {d['iops_min']:.0f}..{d['iops_max']:.0f} IOPS over {d['n']} runs")
        if spread:
            out += ["IOPS spread across repeats:", ""] + ["- " + s for s in spread] + [""]
    targets = results.get("summary", {}).get("targets", [])
    if targets:
        out += ["## Targets (issue 6)" + (" - informational, smoke runs are too short to judge" if results.get("mode") == "smoke" else ""),
                "", "| LUN | target | measured | status |", "|---|---|---|---|"]
        out += [f"| {t['lun']} | {t['name']} | {t['shown']} | {t['status']} |" for t in targets]
        out.append("")
    out += profile_section(results)
    if results.get("servers"):
        out += ["## Server processes", ""]
        for k, s in results["servers"].items():
            out.append(f"- {k}: pid {s['pid']}, RSS after start {_f((s.get('startup_rss_kib') or 0) / 1024, '{:.1f}')} MiB, "
                       f"exit status on SIGTERM {s.get('exit_status')}{' (died during the run)' if s.get('died_early') else ''}")
        out.append("")
    out += ["![chart](chart.png)", ""]
    return "\n".join(out)


def profile_section(results: dict) -> list[str]:
    """`--profile`: where each server's CPU goes, and where the machine's two cores go, per job."""
    profiles = results.get("profiles") or []
    if not profiles and not results.get("profile_problem"):
        return []
    out = ["## Where the time goes (perf profiles)", "",
           "One extra, untimed run per job and server under `perf record -a -g -e cpu-clock` (every CPU sampled at "
           "the same rate, idle included). *Machine* splits all samples of both CPUs by process; *server* splits "
           "the server's own samples by where the code lives: kernel (syscalls, socket copies, scheduling), the "
           "server's binary, its runtime (Swift runtime, Foundation and libdispatch for iscsi-nbd; glib for qemu-nbd), "
           "libiscsi (qemu-nbd's iSCSI), libc. `cpu ms/1kIO` is the server's user+sys time in that run.", ""]
    if results.get("profile_problem"):
        out += [f"No profiles: {results['profile_problem']}", ""]
    if not profiles:
        return out
    profiled = {(p["lun"], p["job"]) for p in profiles if not p.get("error")}
    missed = [t for t in results.get("summary", {}).get("targets", []) if t["status"] == "MISS"]
    if missed:
        out += ["Targets missed in the timed runs, and the profiled jobs behind them:", ""]
        for t in missed:
            jobs = [f"`{j}`" + ("" if (t["lun"], j) in profiled else " (not profiled)") for j in t.get("jobs", [])]
            out.append(f"- {t['lun']}: {t['name']} ({t['shown']}): {', '.join(jobs) or '-'}")
        out.append("")
    out += ["| LUN | job | server | IOPS (under perf) | cpu ms/1kIO | machine: server / tgtd / fio / idle / other % "
            "| server: kernel / own binary / runtime / libiscsi / libc / other % |",
            "|---|---|---|---:|---:|---|---|"]
    for p in profiles:
        if p.get("error"):
            out.append(f"| {p['lun']} | {p['job']} | {p['server']} | - | - | {p['error']} | |")
            continue
        m, c = p["machine"], p["categories"]
        out.append(f"| {p['lun']} | {p['job']} | {p['server']} | {_f(p.get('iops'))} | "
                   f"{_f(p.get('cpu_ms_per_1k_io'), '{:.1f}')} | "
                   f"{m['server']:.0f} / {m['tgtd']:.0f} / {m['fio']:.0f} / {m['idle']:.0f} / {m['other']:.0f} | "
                   f"{c['kernel']:.0f} / {c['server binary']:.0f} / {c['runtime']:.0f} / {c['libiscsi']:.0f} / "
                   f"{c['libc']:.0f} / {c['other']:.0f} |")
    out.append("")
    for p in profiles:
        if p.get("error") or not p.get("top"):
            continue
        out += [f"Heaviest symbols, {p['lun']} LUN, `{p['job']}`, {p['server']} (percent of the server's samples):", ""]
        out += [f"- {t['percent']:.1f} % {t['category']} ({t['dso']}): `{t['symbol']}`" for t in p["top"]]
        out.append("")
    return out


def chart(results: dict, path: Path) -> str | None:
    """Writes the PNG; returns a problem description instead of raising."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no chart: matplotlib missing for {sys.executable} ({e}); apt-get install -y python3-matplotlib"
    per = results.get("summary", {}).get("per_lun", {})
    luns = [l for l in per if per[l]]
    if not luns:
        return "no chart: no successful measurements"
    fig, axes = plt.subplots(2, len(luns), figsize=(7 * len(luns) + 1, 9), squeeze=False)
    colors = {QEMU: "#7f7f7f", AA: "#c7c7c7", OURS: "#1f77b4", PERF: "#2ca02c"}
    for col, lun in enumerate(luns):
        jobs = list(per[lun])
        ax = axes[0][col]
        present = [sv for sv in (QEMU, AA, OURS, PERF) if any(per[lun][j]["servers"].get(sv) for j in jobs)]
        width = 0.8 / max(1, len(present))
        for k, server in enumerate(present):
            ys = [per[lun][j]["servers"].get(server, {}).get("iops") or 0 for j in jobs]
            offset = (k - (len(present) - 1) / 2) * width
            ax.bar([i + offset for i in range(len(jobs))], ys, width, label=server, color=colors[server])
        ax.set_yscale("log")
        positive = [d.get("iops") for j in jobs for d in per[lun][j]["servers"].values() if d.get("iops")]
        if positive:
            ax.set_ylim(bottom=min(positive) / 2, top=max(positive) * 1.5)
        ax.set_title(f"{lun} LUN: IOPS (median)")
        ax.set_xticks(range(len(jobs)))
        ax.set_xticklabels(jobs, rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax2 = axes[1][col]
        ratios = [per[lun][j]["ratios"].get("iops_vs_qemu") for j in jobs]
        if any(r is not None for r in ratios):
            ax2.bar(range(len(jobs)), [r or 0 for r in ratios], 0.6, color=colors[OURS], label="IOPS iscsi-nbd / qemu-nbd")
            cpu = [per[lun][j]["ratios"].get("cpu_vs_qemu") for j in jobs]
            ax2.plot(range(len(jobs)), [c if c is not None else float("nan") for c in cpu], "o", color="#d62728",
                     label="CPU per I/O iscsi-nbd / qemu-nbd")
            aa = [per[lun][j]["ratios"].get("aa_iops") for j in jobs]
            if any(a is not None for a in aa):
                ax2.plot(range(len(jobs)), [a if a is not None else float("nan") for a in aa], "x", color="black",
                         markersize=9, label="A/A: IOPS qemu-nbd-b / qemu-nbd (noise)")
            for y, style in ((1.0, "-"), (1.3, ":"), (1.5, "--")):
                ax2.axhline(y, color="black", linestyle=style, linewidth=0.8)
            ax2.legend(fontsize=8)
        else:
            ax2.text(0.5, 0.5, "no iscsi-nbd measurements", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_title(f"{lun} LUN: ratios (targets 1.3x / 1.5x dashed)")
        ax2.set_xticks(range(len(jobs)))
        ax2.set_xticklabels(jobs, rotation=35, ha="right", fontsize=8)
        ax2.grid(axis="y", alpha=0.3)
    m = results.get("machine", {})
    fig.suptitle(("A/A CALIBRATION (second qemu-nbd as 'iscsi-nbd') - " if results.get("calibration") else "") +
                 f"iscsi-nbd vs qemu-nbd vs iscsi-perf - {m.get('nproc')} CPUs {m.get('cpu_model')}, "
                 f"kernel {m.get('kernel')}, {results.get('started')}", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        return f"no chart: cannot write {path}: {e}"
    finally:
        plt.close(fig)
    return None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: report.py results.json")
    src = Path(sys.argv[1])
    data = json.loads(src.read_text())
    data["summary"] = summarize(data)
    (src.parent / "report.md").write_text(markdown(data))
    problem = chart(data, src.parent / "chart.png")
    print(console_table(data))
    if problem:
        sys.exit(problem)

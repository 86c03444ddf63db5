#!/usr/bin/python3
"""Unit tests for the benchmark harness's parsing and arithmetic (no IO, no peers).

    /usr/bin/python3 -m unittest discover -s scripts/bench -p 'test_*.py'
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import perfprofile  # noqa: E402
import report  # noqa: E402


def fio_side(iops, ios, lat_ns, p99_ns=None, bw=0):
    side = {"iops": iops, "total_ios": ios, "bw_bytes": bw, "lat_ns": {"mean": lat_ns},
            "clat_ns": {"percentile": {"99.000000": p99_ns}} if p99_ns else {}}
    return side


def run(server, job, rep, iops, lat=None, cpu=None, rss_kib=None, lun="ram"):
    r = {"server": server, "job": job, "repeat": rep, "lun": lun, "iops": iops}
    if lat is not None:
        r["lat_mean_us"] = lat
    if cpu is not None:
        r["cpu_ms_per_1k_io"] = cpu
    if rss_kib is not None:
        r["peak_rss_kib"] = rss_kib
    return r


class ParsingTests(unittest.TestCase):
    def test_fio_json_after_nbd_banner(self):
        text = 'fio: connected to NBD server\n{"jobs": [{"error": 0}]}\n'
        self.assertEqual(bench.parse_fio_json(text), {"jobs": [{"error": 0}]})

    def test_fio_json_missing(self):
        with self.assertRaises(ValueError):
            bench.parse_fio_json("fio: connected to NBD server\n")
        with self.assertRaises(json.JSONDecodeError):
            bench.parse_fio_json('{"jobs": [')

    def test_fio_metrics_mixed_job_weights_latency_by_ios(self):
        data = {"jobs": [{"error": 0, "usr_cpu": 1.5, "sys_cpu": 2.5,
                          "read": fio_side(700.0, 7000, 1_000_000, 4_000_000, bw=7 * 2**20),
                          "write": fio_side(300.0, 3000, 2_000_000, 9_000_000, bw=3 * 2**20)}]}
        m = bench.fio_metrics(data)
        self.assertEqual(m["iops"], 1000.0)
        self.assertEqual(m["ios"], 10000)
        self.assertEqual(m["bw_bytes"], 10 * 2**20)
        self.assertAlmostEqual(m["lat_mean_us"], 1300.0)  # (0.7*1000 + 0.3*2000) us
        self.assertAlmostEqual(m["clat_p99_us"], 9000.0)
        self.assertEqual(m["client_cpu_pct"], 4.0)

    def test_fio_metrics_idle_direction_ignored(self):
        data = {"jobs": [{"read": fio_side(0, 0, 0), "write": fio_side(50.0, 500, 3000)}]}
        m = bench.fio_metrics(data)
        self.assertEqual(m["iops"], 50.0)
        self.assertNotIn("read_iops", m)
        self.assertAlmostEqual(m["lat_mean_us"], 3.0)

    def test_fio_metrics_no_io(self):
        m = bench.fio_metrics({"jobs": [{"read": fio_side(0, 0, 0), "write": fio_side(0, 0, 0)}]})
        self.assertEqual(m["ios"], 0)
        self.assertIsNone(m["lat_mean_us"])

    def test_iscsi_perf_last_average_wins(self):
        text = ("will run for 3 seconds.\n\n00:00:02 - lba 1, iops current 30508 (119 MB/s), iops average 30508 "
                "(119 MB/s), in_flight 32, busy 0\r00:00:01 - lba 2, iops current 35850 (140 MB/s), iops average "
                "33179 (129 MB/s), in_flight 32\riops average 34010 (132 MB/s)          \n\nfinished.\n")
        self.assertEqual(bench.parse_iscsi_perf(text), 34010)
        self.assertIsNone(bench.parse_iscsi_perf("iscsi_connect failed\n"))

    def test_stat_cpu_ticks_with_awkward_command_name(self):
        # comm may contain spaces and ')' itself; utime=7, stime=5 are fields 14 and 15.
        line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 42 1000 200\n"
        self.assertEqual(bench.parse_stat_cpu_ticks(line), 12)

    def test_stat_cpu_ticks_of_this_process(self):
        self.assertIsInstance(bench.proc_cpu_ticks(__import__("os").getpid()), int)
        self.assertIsNone(bench.proc_cpu_ticks(0))


class JobMatrixTests(unittest.TestCase):
    def test_issue6_matrix(self):
        names = {j.name for j in bench.FULL_JOBS}
        for qd in (1, 32, 128):
            self.assertIn(f"4k-randread-qd{qd}", names)
            self.assertIn(f"4k-randwrite-qd{qd}", names)
        self.assertIn("1m-read-qd8", names)
        self.assertIn("1m-write-qd8", names)
        mixed = next(j for j in bench.FULL_JOBS if j.rw == "randrw")
        self.assertEqual((mixed.bs, mixed.rwmixread), (64 * 1024, 70))
        self.assertTrue(any(j.numjobs == 4 for j in bench.FULL_JOBS))
        self.assertTrue(set(bench.SMOKE_JOBS) <= names)
        # iscsi-perf only reads: no write job may claim a ceiling.
        self.assertTrue(all(j.rw in ("read", "randread") for j in bench.FULL_JOBS if j.perf))

    def test_fio_args(self):
        j = bench.Job("x", "randrw", 65536, 16, numjobs=2, rwmixread=70)
        self.assertEqual(j.fio_args(), ["--rw=randrw", "--bs=65536", "--iodepth=16", "--numjobs=2",
                                        "--group_reporting", "--rwmixread=70"])
        self.assertEqual(j.describe(), "64k randrw 70/30 QD16, 2 connections")

    def test_job_selection_globs(self):
        args = bench.parse_args(["--jobs", "4k-randread-*,1m-write-qd8"])
        self.assertEqual([j.name for j in bench.select_jobs(args)],
                         ["4k-randread-qd1", "4k-randread-qd32", "4k-randread-qd128", "1m-write-qd8",
                          "4k-randread-qd32-4conn"])
        with self.assertRaises(SystemExit):
            bench.select_jobs(bench.parse_args(["--jobs", "nope"]))

    def test_defaults(self):
        smoke = bench.parse_args(["--smoke"])
        self.assertEqual((smoke.repeat, smoke.warmup), (1, 0.0))
        full = bench.parse_args([])
        self.assertEqual((full.repeat, full.warmup), (3, 1.0))


class RunOrderTests(unittest.TestCase):
    def test_two_servers_alternate(self):
        self.assertEqual([bench.run_order(["a", "b"], k) for k in range(4)],
                         [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]])

    def test_three_servers_take_every_position_equally(self):
        servers = ["q", "q2", "ours"]
        orders = [bench.run_order(servers, k) for k in range(6)]
        for srv in servers:
            self.assertEqual([o.index(srv) for o in orders].count(0), 2, orders)
            self.assertEqual([o.index(srv) for o in orders].count(2), 2, orders)
        self.assertTrue(all(sorted(o) == sorted(servers) for o in orders))

    def test_one_server(self):
        self.assertEqual(bench.run_order(["a"], 5), ["a"])


class SummaryTests(unittest.TestCase):
    def test_aa_control_ratio_shown_next_to_target(self):
        runs = [run("qemu-nbd", "4k-randwrite-qd32", 0, 100), run("qemu-nbd-b", "4k-randwrite-qd32", 0, 110),
                run("iscsi-nbd", "4k-randwrite-qd32", 0, 160)]
        s = report.summarize({"runs": runs})
        self.assertAlmostEqual(s["per_lun"]["ram"]["4k-randwrite-qd32"]["ratios"]["aa_iops"], 1.1)
        t = next(t for t in s["targets"] if t["name"].startswith("4k QD32 randwrite"))
        self.assertEqual(t["shown"], "1.60x; A/A 1.10x")
        results = {"runs": runs, "summary": s, "config": {"repeat": 1}, "aa_control": "qemu-nbd-b"}
        headers, rows = report.table(results, "ram")
        self.assertEqual(headers.count("A/A"), 3)
        self.assertEqual(rows[0][headers.index("A/A")], "1.10x")

    def test_baseline_columns_pair_this_build_with_the_baseline(self):
        runs = [run("qemu-nbd", "1m-read-qd8", 0, 100, lat=10, cpu=8), run("iscsi-nbd", "1m-read-qd8", 0, 150, lat=6, cpu=3),
                run("iscsi-nbd-base", "1m-read-qd8", 0, 120, lat=8, cpu=4, rss_kib=2048)]
        s = report.summarize({"runs": runs})
        r = s["per_lun"]["ram"]["1m-read-qd8"]["ratios"]
        self.assertEqual((r["base_iops"], r["base_lat"], r["base_cpu"]), (1.25, 0.75, 0.75))
        self.assertAlmostEqual(r["iops_vs_qemu"], 1.5)  # the baseline does not disturb the qemu-nbd ratios
        results = {"runs": runs, "summary": s, "config": {"repeat": 1, "jobs": []}, "baseline": "/tmp/old"}
        headers, rows = report.table(results, "ram")
        self.assertEqual(headers.count("vs base"), 3)
        self.assertEqual([c for h, c in zip(headers, rows[0]) if h == "vs base"], ["1.25x", "0.75x", "0.75x"])
        self.assertEqual(rows[0][headers.index("base RSS MiB")], "2.0")
        self.assertIn("--baseline /tmp/old", report.markdown(results))
        no_base = report.table({"runs": runs[:2], "summary": report.summarize({"runs": runs[:2]})}, "ram")[0]
        self.assertNotIn("vs base", no_base)

    def test_ratios_pair_within_repeat_and_take_median(self):
        runs = [
            run("qemu-nbd", "4k-randread-qd32", 0, 100), run("iscsi-nbd", "4k-randread-qd32", 0, 200),
            run("qemu-nbd", "4k-randread-qd32", 1, 50), run("iscsi-nbd", "4k-randread-qd32", 1, 50),
            run("qemu-nbd", "4k-randread-qd32", 2, 100), run("iscsi-nbd", "4k-randread-qd32", 2, 300),
        ]
        s = report.summarize({"runs": runs})
        e = s["per_lun"]["ram"]["4k-randread-qd32"]
        self.assertEqual(e["ratios"]["iops_vs_qemu"], 2.0)  # median of 2.0, 1.0, 3.0
        self.assertEqual(e["servers"]["iscsi-nbd"]["iops"], 200)
        self.assertEqual((e["servers"]["qemu-nbd"]["iops_min"], e["servers"]["qemu-nbd"]["iops_max"]), (50, 100))
        self.assertEqual(e["ratio_samples"]["iops_vs_qemu"], [2.0, 1.0, 3.0])  # in repeat order
        t = next(t for t in s["targets"] if t["name"].startswith("4k QD32 randread"))
        self.assertEqual((t["status"], t["shown"]), ("PASS", "2.00x (repeats 1.00..3.00)"))

    def test_failed_runs_are_excluded_and_unpaired_repeats_ignored(self):
        runs = [
            run("qemu-nbd", "1m-read-qd8", 0, 100), run("iscsi-nbd", "1m-read-qd8", 0, 130),
            run("qemu-nbd", "1m-read-qd8", 1, 100), dict(run("iscsi-nbd", "1m-read-qd8", 1, 999), error="died"),
            run("iscsi-nbd", "1m-read-qd8", 2, 999),
        ]
        e = report.summarize({"runs": runs})["per_lun"]["ram"]["1m-read-qd8"]
        self.assertAlmostEqual(e["ratios"]["iops_vs_qemu"], 1.3)

    def test_targets(self):
        runs = [
            run("qemu-nbd", "4k-randread-qd32", 0, 100, cpu=10), run("iscsi-nbd", "4k-randread-qd32", 0, 160, cpu=5),
            run("iscsi-perf", "4k-randread-qd32", 0, 170),
            run("qemu-nbd", "4k-randwrite-qd32", 0, 100, cpu=10), run("iscsi-nbd", "4k-randwrite-qd32", 0, 140, cpu=12),
            run("qemu-nbd", "4k-randread-qd1", 0, 10, lat=100), run("iscsi-nbd", "4k-randread-qd1", 0, 12, lat=80),
            run("qemu-nbd", "4k-randread-qd128", 0, 10, rss_kib=30000),
            run("iscsi-nbd", "4k-randread-qd128", 0, 10, rss_kib=45 * 1024),
        ]
        s = report.summarize({"runs": runs})
        t = {x["name"]: x for x in s["targets"]}
        self.assertEqual(t["4k QD32 randread IOPS >= 1.5x qemu-nbd"]["status"], "PASS")
        self.assertEqual(t["4k QD32 randwrite IOPS >= 1.5x qemu-nbd"]["status"], "MISS")
        self.assertEqual(t["QD1 read latency <= 0.8x qemu-nbd"]["status"], "PASS")  # 0.8 exactly
        self.assertEqual(t["4k-randread-qd32: IOPS within 10% of iscsi-perf"]["status"], "PASS")  # 160/170
        self.assertEqual(t["peak RSS at QD128 <= 40 MiB"]["status"], "MISS")
        self.assertEqual(t["CPU time per I/O < qemu-nbd (every job)"]["status"], "MISS")
        self.assertIn("1/2 jobs", t["CPU time per I/O < qemu-nbd (every job)"]["shown"])
        self.assertNotIn("1M seq read (QD8) >= 1.3x qemu-nbd", t)  # job not run: no row
        self.assertEqual(len(s["targets_missed"]), 3)

    def test_targets_without_iscsi_nbd_are_not_applicable(self):
        s = report.summarize({"runs": [run("qemu-nbd", "4k-randread-qd32", 0, 100),
                                       run("qemu-nbd", "4k-randread-qd128", 0, 100, rss_kib=1000)]})
        self.assertTrue(all(t["status"] == "n/a" for t in s["targets"]))
        self.assertEqual(s["targets_missed"], [])

    def test_report_renders_without_measurements(self):
        results = {"runs": [], "config": {"repeat": 1, "jobs": []}, "problems": ["harness: tgtd did not start"],
                   "mode": "smoke"}
        results["summary"] = report.summarize(results)
        self.assertIn("tgtd did not start", report.markdown(results))
        self.assertIn("no successful measurements", report.console_table(results))


@unittest.skipUnless(shutil.which("nbdkit"), "needs nbdkit")
class CrossCheckTests(unittest.TestCase):
    """cross_check against nbdkit's memory plugin: one store seen twice passes, two stores fail."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-test-"))
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def nbdkit(self, name):
        sock = self.dir / f"{name}.sock"
        self.procs.append(subprocess.Popen(["nbdkit", "-f", "-U", str(sock), "memory", "16M"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        server = bench.Server(name, self.dir, "unix")
        server.uri = f"nbd+unix:///?socket={sock}"
        return server

    def test_same_store_passes(self):
        a = self.nbdkit("a")
        b = bench.Server("b", self.dir, "unix", uri=a.uri)
        self.assertIsNone(bench.cross_check([a, b], 16 * 2**20, self.dir))

    def test_separate_stores_fail(self):
        problem = bench.cross_check([self.nbdkit("a"), self.nbdkit("b")], 16 * 2**20, self.dir)
        self.assertIsNotNone(problem)
        self.assertIn("reads back different through b", problem)

    def test_unreachable_server_is_a_problem(self):
        s = bench.Server("gone", self.dir, "unix", uri=f"nbd+unix:///?socket={self.dir}/none.sock")
        self.assertIn("write through gone failed", bench.cross_check([s], 16 * 2**20, self.dir))


SYMBOL_REPORT = """
    30.00%  [kernel.kallsyms]          [k] finish_task_switch.isra.0
    20.00%  iscsi-nbd                  [.] $s7NIOCore10ByteBufferV
    15.00%  libswiftCore.so            [.] swift_retain
     5.00%  libswift_Concurrency.so    [.] swift_task_alloc
    10.00%  libc.so.6                  [.] __memmove_avx_unaligned_erms
     8.00%  libiscsi.so.7.0.0          [.] iscsi_service
     7.00%  libglib-2.0.so.0.7400.6    [.] g_main_context_dispatch
     5.00%  [unknown]                  [k] 0xffffffff8100
"""

COMM_REPORT = """
# comment
    40.00%  swapper
    25.00%  tgtd
    20.00%  NIO-ELT-0-#0
     5.00%  iscsi-nbd
     6.00%  fio
     4.00%  kworker/0:1
"""


class ProfileTests(unittest.TestCase):
    def test_symbol_lines_parse(self):
        rows = perfprofile.parse_symbol_report(SYMBOL_REPORT)
        self.assertEqual(len(rows), 8)
        self.assertEqual(rows[0], (30.0, "[kernel.kallsyms]", "k", "finish_task_switch.isra.0"))
        self.assertEqual(rows[1][1:3], ("iscsi-nbd", "."))

    def test_categories_of_a_swift_server(self):
        rows = perfprofile.parse_symbol_report(SYMBOL_REPORT)
        s = perfprofile.summarize_server(rows, "/work/main/.build/release/iscsi-nbd", top=3)
        c = s["categories"]
        self.assertEqual(c["kernel"], 35.0)
        self.assertEqual(c["server binary"], 20.0)
        self.assertEqual(c["runtime"], 27.0)  # Swift runtime, concurrency, glib
        self.assertEqual(c["libc"], 10.0)
        self.assertEqual(c["libiscsi"], 8.0)
        self.assertEqual(c["other"], 0.0)
        self.assertEqual([t["percent"] for t in s["top"]], [30.0, 20.0, 15.0])
        self.assertEqual(s["top"][1]["category"], "server binary")

    def test_qemu_binary_is_its_own_category(self):
        self.assertEqual(perfprofile.dso_category("/usr/bin/qemu-nbd", ".", "qemu-nbd"), "server binary")
        self.assertEqual(perfprofile.dso_category("/usr/bin/qemu-nbd", ".", "iscsi-nbd"), "other")

    def test_machine_groups(self):
        m = perfprofile.summarize_machine(perfprofile.parse_comm_report(COMM_REPORT), {"NIO-ELT-0-#0", "iscsi-nbd"})
        self.assertEqual(m, {"server": 25.0, "tgtd": 25.0, "fio": 6.0, "idle": 40.0, "other": 4.0})

    def test_report_section_lists_profiles_and_errors(self):
        rows = perfprofile.parse_symbol_report(SYMBOL_REPORT)
        ok = {"lun": "ram", "job": "4k-randread-qd1", "server": "iscsi-nbd", "iops": 5000, "cpu_ms_per_1k_io": 70.0,
              "machine": {"server": 25.0, "tgtd": 25.0, "fio": 6.0, "idle": 40.0, "other": 4.0},
              **perfprofile.summarize_server(rows, "iscsi-nbd", top=2)}
        bad = {"lun": "ram", "job": "4k-randread-qd1", "server": "qemu-nbd", "error": "perf record exited 1"}
        text = "\n".join(report.profile_section({"profiles": [ok, bad]}))
        self.assertIn("| ram | 4k-randread-qd1 | iscsi-nbd | 5000 | 70.0 | 25 / 25 / 6 / 40 / 4 | 35 / 20 / 27 / 8 / 10 / 0 |", text)
        self.assertIn("perf record exited 1", text)
        self.assertIn("30.0 % kernel", text)
        self.assertEqual(report.profile_section({"profiles": []}), [])
        self.assertIn("No profiles: perf missing", "\n".join(report.profile_section({"profile_problem": "perf missing"})))

    def test_missed_targets_choose_the_jobs_to_profile(self):
        runs = [
            run("qemu-nbd", "4k-randread-qd32", 0, 100, cpu=10), run("iscsi-nbd", "4k-randread-qd32", 0, 120, cpu=5),
            run("qemu-nbd", "4k-randwrite-qd32", 0, 100, cpu=10), run("iscsi-nbd", "4k-randwrite-qd32", 0, 160, cpu=12),
            run("qemu-nbd", "4k-randread-qd1", 0, 10, lat=100), run("iscsi-nbd", "4k-randread-qd1", 0, 12, lat=70, cpu=1),
            run("qemu-nbd", "1m-read-qd8", 0, 10, cpu=5, lun="null"), run("iscsi-nbd", "1m-read-qd8", 0, 9, cpu=1, lun="null"),
        ]
        results = {"runs": runs}
        jobs = bench.match_jobs("4k-randread-qd1,4k-randread-qd32,4k-randwrite-qd32,1m-read-qd8")
        # ram: QD32 read below 1.5x; QD32 write above qemu-nbd's CPU per I/O; QD1 latency met.
        self.assertEqual([j.name for j in bench.missed_jobs(results, "ram", jobs)], ["4k-randread-qd32", "4k-randwrite-qd32"])
        self.assertEqual([j.name for j in bench.missed_jobs(results, "null", jobs)], ["1m-read-qd8"])
        summary = report.summarize(results)
        ok = {"lun": "ram", "job": "4k-randread-qd32", "server": "iscsi-nbd", "iops": 5000, "cpu_ms_per_1k_io": 7.0,
              "machine": {"server": 25.0, "tgtd": 25.0, "fio": 6.0, "idle": 40.0, "other": 4.0},
              "categories": {c: 0.0 for c in perfprofile.SERVER_CATEGORIES}, "top": []}
        text = "\n".join(report.profile_section({"profiles": [ok], "summary": summary}))
        self.assertIn("4k QD32 randread IOPS >= 1.5x qemu-nbd (1.20x): `4k-randread-qd32`\n", text)
        self.assertIn("`4k-randwrite-qd32` (not profiled)", text)
        self.assertIn("null: 1M seq read (QD8) >= 1.3x qemu-nbd (0.90x): `1m-read-qd8` (not profiled)", text)

if __name__ == "__main__":
    unittest.main()

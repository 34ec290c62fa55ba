"""Scale evidence for ``sciseg run`` (issue 12): phantoms plus the real shared scans, with 1 and 2 workers.

Measures, per worker count: wall time, scans per minute, CPU use of the whole machine and of the run's process
tree, peak resident memory of each Dask worker process, then the time of a second run (resume: every scan
skipped), and finally a run in which one worker is SIGKILLed while it holds a scan (the scan is retried once,
the run still ends with every scan done). Writes a JSON file of the numbers.

    PYTHONPATH=. python benchmarks/cohort_scale.py --phantoms 40 --workers 1 2 --real \
        --output benchmarks/cohort_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from SCIsegLib.phantom import SAGITTAL, make_phantom  # noqa: E402
from SCIsegLib.volume import write_image_atomic  # noqa: E402

SHARED = REPOSITORY.parent / "shared" / "data"
REAL_T2W = [
    "sct_testing_data/t2/t2.nii.gz",
    "sct_testing_data/t2/t2_fake_lesion.nii.gz",
    "sct_2014_errsm/errsm_11/t2.nii.gz",
    "sct_2014_errsm/errsm_18/t2.nii.gz",
    "sct_2014_errsm/errsm_20/t2.nii.gz",
    "sct_2014_errsm/errsm_21/t2.nii.gz",
    "sct_2014_errsm/errsm_22/t2.nii.gz",
    "sct_tutorial_data/single_subject/data/t2_ms/t2.nii.gz",
]


def build_bids(root: Path, phantoms: int, real: bool, real_limit: int | None = None) -> int:
    """Phantoms as sub-pNN, real scans linked (never copied) as sub-rNN; returns the number of scans."""
    count = 0
    for index in range(phantoms):
        path = root / f"sub-p{index:02d}" / "anat" / f"sub-p{index:02d}_T2w.nii.gz"
        if not path.exists():
            write_image_atomic(make_phantom(index, SAGITTAL, 1 + index % 2).image, path)
        count += 1
    if real:
        for index, relative in enumerate(REAL_T2W[:real_limit]):
            source = SHARED / relative
            if not source.exists():
                continue
            link = root / f"sub-r{index:02d}" / "anat" / f"sub-r{index:02d}_T2w.nii.gz"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
            count += 1
    return count


class Sampler(threading.Thread):
    """Every 0.5 s: CPU % of the machine and of the process tree, resident memory of each worker process."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.stop = threading.Event()
        self.machine_cpu: list[float] = []
        self.tree_cpu_seconds = 0.0
        self.peak_rss: dict[int, int] = {}
        self.worker_pids: set[int] = set()
        self._cpu_times: dict[int, float] = {}

    def run(self) -> None:
        psutil.cpu_percent(None)
        while not self.stop.wait(0.5):
            self.machine_cpu.append(psutil.cpu_percent(None))
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for process in processes:
                try:
                    times = process.cpu_times()
                    self._cpu_times[process.pid] = times.user + times.system
                    if process.pid != self.root.pid and "spawn_main" in " ".join(process.cmdline()):
                        self.worker_pids.add(process.pid)  # a Dask worker, spawned by its nanny in the driver
                        self.peak_rss[process.pid] = max(self.peak_rss.get(process.pid, 0), process.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        self.tree_cpu_seconds = sum(self._cpu_times.values())


def run_once(bids: Path, deriv: Path, workers: int, kill_after_first: bool = False) -> dict:
    command = [sys.executable, "-m", "SCIsegLib", "run", "--bids", str(bids), "-o", str(deriv), "--model", "sciseg-demo",
               "--device", "cpu", "--workers", str(workers), "--progress", "jsonl"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    load_before = os.getloadavg()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    sampler = Sampler(process.pid)
    sampler.start()
    killed = None
    events = []
    for line in process.stdout:
        event = json.loads(line)
        events.append(event)
        if kill_after_first and killed is None and event["event"] == "scan":
            time.sleep(1.0)  # the worker has taken its next scan
            victim = sorted(sampler.worker_pids)[0] if sampler.worker_pids else None
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                killed = victim
    process.wait()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    stderr = process.stderr.read()
    result = next((e for e in events if e["event"] == "result"), {})
    scans = [e for e in events if e["event"] == "scan"]
    import pandas as pd

    summary = pd.read_csv(deriv / "run_summary.csv", keep_default_na=False)
    done = summary[summary["status"] == "done"]
    model_loads = int((done["seconds_model"].replace("", 0).astype(float) > 0.5).sum()) if len(done) else 0
    machine_cpu = sampler.machine_cpu or [0.0]
    return {
        "workers": workers,
        "exit_code": process.returncode,
        "scans": len(scans),
        "done": result.get("done"),
        "skipped": result.get("skipped"),
        "failed": result.get("failed"),
        "failures": summary[summary["status"] == "failed"][["file", "reason"]].to_dict("records"),
        "wall_seconds": round(seconds, 1),
        "scans_per_minute": round(60 * len(scans) / seconds, 2),
        "machine_cpu_percent_mean": round(sum(machine_cpu) / len(machine_cpu), 1),
        "run_cpu_seconds": round(sampler.tree_cpu_seconds, 1),
        "run_cpu_cores_used_mean": round(sampler.tree_cpu_seconds / seconds, 2),
        "peak_rss_mib_per_worker": sorted(round(v / 2**20) for v in sampler.peak_rss.values()),
        "model_loads": model_loads,
        "median_seconds_per_scan_in_worker": float(done["seconds_total"].astype(float).median()) if len(done) else None,
        "median_seconds_segment": float(done["seconds_segment"].astype(float).median()) if len(done) else None,
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "killed_worker_pid": killed,
        "stderr_tail": stderr[-600:] if process.returncode not in (0, 3) else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--real", action="store_true", help="add the real T2w scans of ../shared/data")
    parser.add_argument("--real-limit", type=int, default=None, help="take only the first N real scans")
    parser.add_argument("--kill-phantoms", type=int, default=10, help="phantoms of the SIGKILL run (0 = skip it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sciseg_cohort_scale"))
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "cohort_scale.json")
    args = parser.parse_args()

    bids = args.work / "bids"
    total = build_bids(bids, args.phantoms, args.real, args.real_limit)
    report = {"machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
                          "note": "2 cores shared with four other engineers' jobs during the measurement"},
              "scans": total, "runs": []}
    for workers in args.workers:
        deriv = args.work / f"deriv_{workers}w"
        subprocess.run(["rm", "-rf", str(deriv)], check=True)
        first = run_once(bids, deriv, workers)
        shutil.copy(deriv / "run_summary.csv", args.output.with_name(f"{args.output.stem}_{workers}w_run_summary.csv"))
        print(json.dumps(first), flush=True)
        resumed = run_once(bids, deriv, workers)
        print(json.dumps(resumed), flush=True)
        report["runs"].append({"first": first, "resume": resumed})
        args.output.write_text(json.dumps(report, indent=2))
    if args.kill_phantoms:
        kill_bids = args.work / "bids_kill"
        build_bids(kill_bids, args.kill_phantoms, False)
        deriv = args.work / "deriv_kill"
        subprocess.run(["rm", "-rf", str(deriv)], check=True)
        killed = run_once(kill_bids, deriv, 2, kill_after_first=True)
        print(json.dumps(killed), flush=True)
        report["sigkill"] = killed
    args.output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

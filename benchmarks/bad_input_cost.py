"""What a refused input costs: CPU seconds, wall seconds and peak memory of `python -m SCIsegLib segment`.

Usage: ``PYTHONPATH=$PWD python benchmarks/bad_input_cost.py [--repeat 3] [--code PATH]``; ``--code`` runs another
checkout's SCIsegLib (e.g. /work/main) on the same inputs, for a before/after comparison. The inputs are the
corpus of ``Testing/test_hostile_images.py`` (built in a temporary folder, deleted afterwards).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "Testing"))

from test_hostile_images import CORPUS  # noqa: E402


def measure(code: Path, path: Path, output: Path) -> tuple[int, float, float, float]:
    """(exit code, CPU s, wall s, peak MB) of one refusal."""
    environment = {**os.environ, "PYTHONPATH": str(code)}
    model = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "SCIsegLib", "segment", str(path), "-o", str(output), "--model", str(model), "--device", "cpu",
         "--progress", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--code", type=Path, default=REPOSITORY, help="checkout whose SCIsegLib runs")
    parser.add_argument("--only", default=None, help="cases whose name contains this text")
    args = parser.parse_args()
    print(f"{'case':<32} {'exit':>4} {'CPU s':>7} {'wall s':>7} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for name, build, _ in CORPUS:
            if args.only and args.only not in name:
                continue
            case_folder = Path(folder) / name.replace(" ", "_").replace("%", "pc").replace("^", "")
            case_folder.mkdir()
            path = build(case_folder)
            for _ in range(args.repeat):
                code, cpu, wall, peak = measure(args.code, path, case_folder / "out")
                print(f"{name:<32} {code:>4} {cpu:>7.2f} {wall:>7.2f} {peak:>8.0f}", flush=True)


if __name__ == "__main__":
    main()

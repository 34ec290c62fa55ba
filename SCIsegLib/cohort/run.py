"""The driver of ``sciseg run``: one Dask task per scan, results gathered as they finish, tables and report.

The driver sends paths and settings and receives small dicts; it never opens an image. After every finished
scan (at most every 5 s) it rewrites the QC report's entries, so the report grows as the run goes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from ..errors import CancelledError, InputError
from ..inference import InferenceSettings
from ..models import ModelInfo
from ..postprocess import PostprocessSettings
from ..qc.report import qc_entry, write_report
from .cluster import ClusterPlan, dashboard_available, open_client
from .discovery import Scan
from .outputs import RUN_LOCK, remove_stale_staging, tidy_after_run, write_dataset_description
from .tables import write_cohort_tables, write_run_summary
from .task import ScanJob, process_scan

EventCallback = Callable[[dict], None]
#: The QC report's entries are rewritten at most this often during a run (seconds), and once at the end.
REPORT_EVERY_S = 5.0


@dataclass
class RunOutcome:
    """What a run did: rows of ``run_summary.csv`` (input order) and the files it wrote."""

    rows: list[dict]
    summary: Path
    tables: list[Path]
    report: Path

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)


def _killed_reason(plan: ClusterPlan, error: BaseException) -> str:
    limit = f" (limit {plan.memory_per_worker} per worker)" if plan.memory_per_worker else ""
    return (
        f"the Dask worker running this scan died twice ({type(error).__name__}; retried once on another worker), most "
        f"often because it ran out of memory{limit}; give workers more memory with --memory-per-worker or run fewer workers."
    )


def run_cohort(
    scans: list[Scan],
    deriv: Path,
    model: ModelInfo,
    plan: ClusterPlan,
    *,
    postprocess: PostprocessSettings = PostprocessSettings(),
    force: bool = False,
    participants: list[dict[str, str]] | None = None,
    on_event: EventCallback | None = None,
    engine: str = "auto",
    crop: str = "fast",
    corrections_root: Path | None = None,
    command: str = "",
    source_dataset: Path | None = None,
) -> RunOutcome:
    """Run every scan on the planned cluster; write ``run_summary.csv``, the cohort tables and ``qc/``.

    ``corrections_root``: a BIDS dataset; scans with a rater correction in its ``derivatives/labels`` are measured
    on the latest version (:mod:`SCIsegLib.cohort.corrections`)."""
    from distributed import as_completed

    deriv = Path(deriv).resolve()
    created = not deriv.exists()  # removed again when the run is refused before it starts (nothing of it left)
    deriv.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda event: None)
    participants = participants or []
    sites = {p["participant_id"]: p.get("site", "") for p in participants}
    lock = FileLock(str(deriv / RUN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(f"another `sciseg run` is writing to {deriv}; wait for it or choose another output folder.") from None
    refused = connected = False
    try:
        remove_stale_staging(deriv)
        inference = InferenceSettings(device=plan.device, threads=plan.torch_threads, engine=engine, crop=crop)
        model_sha256 = model.weights_sha256()
        corrections = Path(corrections_root).resolve() if corrections_root is not None else None
        jobs = [ScanJob(scan, deriv, model.path, model.name, model_sha256, inference, postprocess, force, corrections,
                        command) for scan in scans]
        rows: list[dict | None] = [None] * len(jobs)
        with open_client(plan) as client:  # a scheduler that does not answer is refused before anything is written
            connected = True
            write_dataset_description(deriv, source_dataset)
            report = write_report(deriv, [])
            link = client.dashboard_link if plan.kind != "local" or dashboard_available() else None
            emit({"event": "start", "scans": len(jobs), "dashboard": link, "cluster": plan.kind,
                  "workers": plan.workers, "report": str(report)})
            keys = [f"sciseg-scan-{index}-{job.scan.stem}" for index, job in enumerate(jobs)]
            futures = client.map(process_scan, jobs, key=keys, pure=False)
            index_of = {future.key: index for index, future in enumerate(futures)}
            finished, last_report = 0, time.monotonic()
            try:
                for future in as_completed(futures):
                    index = index_of[future.key]
                    scan = jobs[index].scan
                    try:
                        row = future.result()
                    except Exception as error:  # noqa: BLE001 - KilledWorker and friends: the scan fails, the run goes on
                        name = type(error).__name__
                        reason = _killed_reason(plan, error) if name == "KilledWorker" else f"the task failed ({name}: {error})."
                        row = {"file": str(scan.path), "subject": scan.subject, "session": scan.session, "scan": scan.stem,
                               "status": "failed", "reason": reason, "measured_on": ""}
                    future.release()
                    rows[index] = row
                    finished += 1
                    if time.monotonic() - last_report >= REPORT_EVERY_S:  # bounded cost for 10,000-scan cohorts
                        write_report(deriv, [qc_entry(r, sites.get(r["subject"], "")) for r in rows if r is not None])
                        last_report = time.monotonic()
                    emit({"event": "scan", "index": index, "file": row["file"], "status": row["status"],
                          "reason": row.get("reason", ""), "seconds": row.get("seconds_total"),
                          "finished": finished, "total": len(jobs)})
            except KeyboardInterrupt:
                finished = [r for r in rows if r is not None]
                write_run_summary(finished, deriv)
                raise CancelledError(
                    f"run cancelled after {len(finished)} of {len(jobs)} scans; finished scans are kept, run again to do the rest."
                ) from None
        final_rows = [r for r in rows if r is not None]
        summary = write_run_summary(final_rows, deriv)
        tables = write_cohort_tables(final_rows, deriv, participants)
        report = write_report(deriv, [qc_entry(r, sites.get(r["subject"], "")) for r in final_rows])
        outcome = RunOutcome(final_rows, summary, tables, report)
        emit({"event": "result", "done": outcome.count("done"), "skipped": outcome.count("skipped"),
              "failed": outcome.count("failed"), "summary": str(summary), "report": str(report)})
        tidy_after_run(deriv)
        Path(lock.lock_file).unlink(missing_ok=True)  # still held: a run starting now makes its own lock file
        return outcome
    except InputError:
        refused = created and not connected
        raise
    finally:
        lock.release()
        if refused:
            shutil.rmtree(deriv, ignore_errors=True)

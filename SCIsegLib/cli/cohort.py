"""``sciseg run``: the whole pipeline over a cohort on Dask (:mod:`SCIsegLib.cohort`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CancelledError, InputError
from ..inference.base import CROP_MODES
from ..provenance import recorded_command
from .common import EXIT_OK, JsonLines


EXIT_SOME_FAILED = 3


def _add_run_parser(commands) -> None:
    """``sciseg run``: the whole pipeline over a cohort on Dask (SCIsegLib.cohort)."""
    run = commands.add_parser(
        "run", help="segment, measure and QC a cohort (BIDS dataset or files) on Dask, resumable",
        description="Per scan: segment -> lesion morphometrics -> cord CSA per slice -> QC images, written to a BIDS "
        "derivatives folder with run_summary.csv, cohort_subjects.csv, cohort_lesions.csv and qc/index.html. Scans whose "
        "outputs are complete for the same source, model and settings are skipped (--force redoes them). Exit codes: 0 "
        "every scan done or skipped, 3 some scans failed (see run_summary.csv), 2 bad arguments, 130 cancelled.",
    )
    run.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files (instead of --bids)")
    run.add_argument("--bids", type=Path, default=None, help="BIDS dataset root: takes sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]")
    run.add_argument("--suffix", default="T2w", help="BIDS suffix of the scans (default T2w)")
    run.add_argument("--include", default=None, help="shell pattern on subject folders, e.g. 'sub-0*'")
    run.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                     help="with --bids: only these participants (01 or sub-01); a label without a scan is refused")
    run.add_argument("-o", "--output", type=Path, required=True, help="derivatives folder (outside the sub-* folders)")
    run.add_argument("--model", default="sciseg-v2", help="installed model name or model folder (default: sciseg-v2)")
    run.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (on the workers)")
    run.add_argument("--engine", choices=("auto", "reference", "openvino", "openvino-int8", "torch-bf16", "cuda"), default="auto",
                     help="as for `sciseg segment` (auto: the fastest that works on the workers; reference: SCT's exact call)")
    run.add_argument("--crop", choices=CROP_MODES, default="fast", help="as for `sciseg segment` (fast engines)")
    run.add_argument("--force", action="store_true", help="redo scans whose outputs are complete")
    run.add_argument(
        "--labels", choices=("corrected", "model"), default="corrected",
        help="corrected (default): measure each scan on its latest rater correction in BIDS_ROOT/derivatives/labels "
        "where one exists, else on the model's masks (a rerun redoes only the scans whose correction changed); "
        "model: always segment and measure the model's masks",
    )
    run.add_argument("--lesion-in-cord", action="store_true", help="drop lesion voxels outside the cord")
    run.add_argument("--keep-largest-cord", action="store_true", help="keep only the largest cord component")
    run.add_argument(
        "--scheduler", default=None,
        help="where to run: omitted or 'local' = a LocalCluster sized to this machine; tcp://host:8786 = an existing "
        "Dask scheduler (its workers need SCIseg installed); 'slurm' = workers submitted as SLURM jobs (--slurm-*)",
    )
    run.add_argument("--workers", type=int, default=None, help="worker processes (local) or SLURM jobs (default: sized to the machine; 1 job)")
    run.add_argument("--memory-per-worker", default=None, help="memory limit of each local worker, e.g. 4GiB (default: RAM / workers)")
    run.add_argument("--slurm-queue", default=None, help="SLURM partition (-p)")
    run.add_argument("--slurm-account", default=None, help="SLURM account (-A)")
    run.add_argument("--slurm-walltime", default="04:00:00", help="time limit of each worker job (default 04:00:00)")
    run.add_argument("--slurm-memory", default="16GB", help="memory of each worker job (default 16GB)")
    run.add_argument("--slurm-cores", type=int, default=4, help="CPU cores of each worker job (default 4)")
    run.add_argument("--slurm-gpus", type=int, default=0, help="GPUs of each worker job (--gres=gpu:N; default 0)")
    run.add_argument("--slurm-job-extra", action="append", default=[], metavar="DIRECTIVE",
                     help="extra #SBATCH directive, repeatable, e.g. --slurm-job-extra=--constraint=a100")
    run.add_argument(
        "--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
        help="a bar over scans on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )


def _run_cohort(args: argparse.Namespace, events: JsonLines | None) -> int:
    from ..cohort.cluster import SlurmOptions, plan_cluster
    from ..cohort.discovery import check_output_folder, find_bids_scans, read_participants, scans_from_files
    from ..cohort.run import run_cohort
    from ..models import resolve_model
    from ..postprocess import PostprocessSettings

    if bool(args.bids) == bool(args.inputs):
        raise InputError("give either --bids ROOT or image files, not both and not neither.")
    if args.participant_label and not args.bids:
        raise InputError("--participant-label selects participants of a BIDS dataset; give it with --bids ROOT.")
    scans = (find_bids_scans(args.bids, args.suffix, args.include, args.participant_label) if args.bids
             else scans_from_files(args.inputs))
    check_output_folder(args.output, scans, args.bids)
    slurm = SlurmOptions(queue=args.slurm_queue, account=args.slurm_account, walltime=args.slurm_walltime,
                         memory=args.slurm_memory, cores=args.slurm_cores, gpus=args.slurm_gpus,
                         job_extra=tuple(args.slurm_job_extra), log_directory=str(args.output.resolve() / "logs" / "slurm"))
    plan = plan_cluster(args.scheduler, args.workers, args.device, args.memory_per_worker, slurm)
    model = resolve_model(args.model)
    postprocess = PostprocessSettings(keep_largest_cord=args.keep_largest_cord, lesion_inside_cord=args.lesion_in_cord)
    bar = None
    if events is None and (args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())):
        from tqdm import tqdm

        bar = tqdm(total=len(scans), unit="scan", file=sys.stderr)

    def on_event(event: dict) -> None:
        if events is not None:
            events(event)
        if event["event"] == "start":
            where = f"Dask dashboard: {event['dashboard']}" if event["dashboard"] else "no Dask dashboard (install bokeh for one)"
            sys.stderr.write(f"sciseg run: {event['scans']} scans on {event['workers']} {event['cluster']} worker(s); {where}\n")
            sys.stderr.write(f"sciseg run: QC report {event['report']}\n")
        elif event["event"] == "scan":
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{event['status']} {Path(event['file']).name}")
            if event["status"] == "failed" and events is None:
                sys.stderr.write(f"sciseg run: failed: {event['file']}: {event['reason']}\n")

    try:
        outcome = run_cohort(scans, args.output, model, plan, postprocess=postprocess, force=args.force,
                             participants=read_participants(args.bids), on_event=on_event,
                             engine=args.engine, crop=args.crop,
                             corrections_root=args.bids if args.labels == "corrected" else None,
                             command=recorded_command(sys.argv[1:], args.output), source_dataset=args.bids)
    except KeyboardInterrupt:
        raise CancelledError("run cancelled; finished scans are kept, run the same command again to do the rest.") from None
    finally:
        if bar is not None:
            bar.close()
    failed = outcome.count("failed")
    if events is None:
        print(f"{outcome.count('done')} done, {outcome.count('skipped')} skipped (already complete), {failed} failed")
        print(f"summary: {outcome.summary}")
        for table in outcome.tables:
            print(f"table:   {table}")
        print(f"QC:      {outcome.report}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


PARSERS = {"run": _add_run_parser}
#: ``run`` takes the JSON-lines event writer too (:data:`.entry.TAKE_EVENTS`).
HANDLERS = {"run": _run_cohort}

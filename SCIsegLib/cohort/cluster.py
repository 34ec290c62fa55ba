"""Where the scans run: an embedded Dask ``LocalCluster`` (default), an existing scheduler, or SLURM jobs.

Sizing of the embedded cluster: one worker process per GPU when there are GPUs, else one per 4 CPU cores
(at least one), each with one Dask thread (one scan at a time) and the cores shared out as torch threads;
the memory of the machine is shared out as each worker's limit (Dask's nanny restarts a worker past 95 %
of it). A worker that dies while running a scan gets the scan retried once on another worker
(``distributed.scheduler.allowed-failures = 1``); a second death fails the scan (often out of memory).

The embedded cluster admits only this run: it listens on 127.0.0.1 over TLS with a certificate made for the run
(Dask's ``Security.temporary()``: a fresh key and self-signed CA held in memory, never written), and the scheduler
requires that certificate from every client and worker, so another local user or process cannot connect and
submit tasks. An existing scheduler (``--scheduler tls://...`` or ``tcp://...``) is the site's: SCIseg connects
with the TLS settings of Dask's own configuration (``distributed.comm.tls.*``); ``tcp://`` has no authentication
and runs the tasks of anyone who can reach it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import InputError

CONNECT_TIMEOUT_S = 5
ALLOWED_FAILURES = 1


@dataclass(frozen=True)
class SlurmOptions:
    """What a SLURM user sets for the worker jobs (``sbatch`` options).

    Attributes:
        queue: partition (``-p``); account: ``-A``; walltime: ``-t`` (``HH:MM:SS``); memory: per job (``16GB``);
        cores: CPU cores per job; gpus: GPUs per job (``--gres=gpu:N``); job_extra: more ``#SBATCH`` directives
        (``--constraint=a100``); log_directory: where the job logs go.
    """

    queue: str | None = None
    account: str | None = None
    walltime: str = "04:00:00"
    memory: str = "16GB"
    cores: int = 4
    gpus: int = 0
    job_extra: tuple[str, ...] = ()
    log_directory: str | None = None


@dataclass
class ClusterPlan:
    """The resolved cluster: what to start and how each worker runs the network."""

    kind: str  # "local", "address" or "slurm"
    workers: int
    torch_threads: int | None
    device: str
    memory_per_worker: str | None = None
    address: str | None = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


def gpu_count() -> int:
    """CUDA GPUs visible here (0 without torch's CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def total_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def plan_cluster(
    scheduler: str | None,
    workers: int | None,
    device: str,
    memory_per_worker: str | None,
    slurm: SlurmOptions | None = None,
) -> ClusterPlan:
    """Check the cluster arguments and decide the sizing (no process is started here)."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}.")
    if scheduler in (None, "", "local"):
        gpus = gpu_count() if device in ("auto", "cuda", "gpu") else 0
        cores = os.cpu_count() or 1
        count = workers or (gpus if gpus else max(1, cores // 4))
        threads = max(1, cores // count)
        memory = memory_per_worker or f"{max(total_memory_bytes() // count, 1 << 28) // (1 << 20)}MiB"
        return ClusterPlan("local", count, threads, "cuda" if gpus and device == "auto" else device, memory)
    if scheduler == "slurm":
        options = slurm or SlurmOptions()
        if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", options.walltime):
            raise InputError(f"--slurm-walltime '{options.walltime}' is not a SLURM time such as 04:00:00 or 1-00:00:00.")
        if options.cores < 1 or options.gpus < 0:
            raise InputError("--slurm-cores must be at least 1 and --slurm-gpus at least 0.")
        slurm_device = "cuda" if options.gpus and device == "auto" else device
        return ClusterPlan("slurm", workers or 1, options.cores, slurm_device, options.memory, slurm=options)
    if re.fullmatch(r"(tcp|tls|ucx)://[^\s/]+:\d+", scheduler):
        return ClusterPlan("address", workers or 0, None, device, None, address=scheduler)
    raise InputError(f"--scheduler '{scheduler}' is not 'local', 'slurm' or an address such as tcp://host:8786.")


def slurm_cluster_kwargs(plan: ClusterPlan, python: str = sys.executable) -> dict:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for the plan: one worker process per job."""
    options = plan.slurm
    extra = list(options.job_extra)
    if options.gpus:
        extra.append(f"--gres=gpu:{options.gpus}")
    kwargs = {
        "queue": options.queue,
        "account": options.account,
        "walltime": options.walltime,
        "memory": options.memory,
        "cores": options.cores,
        "processes": 1,
        "job_extra_directives": extra,
        "python": python,
        "worker_extra_args": ["--nthreads", "1"],
    }
    if options.log_directory:
        kwargs["log_directory"] = options.log_directory
    return {key: value for key, value in kwargs.items() if value is not None}


def dashboard_available() -> bool:
    """Dask's dashboard needs bokeh; without it no link is printed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def open_client(plan: ClusterPlan, local_directory: Path | None = None) -> Iterator:
    """A ``distributed.Client`` for the plan; the cluster it started (if any) is closed on exit.

    Raises InputError within about CONNECT_TIMEOUT_S seconds when an address does not answer.
    """
    import dask
    from distributed import Client

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                          "distributed.worker.memory.terminate": 0.95,
                          # a worker holding the model sits at a steady level: pausing it would stall the run
                          "distributed.worker.memory.pause": False,
                          "distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False,
                          "distributed.admin.system-monitor.gil.enabled": False}):
        if plan.kind == "address":
            try:
                client = Client(plan.address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as error:
                raise InputError(
                    f"the Dask scheduler {plan.address} did not answer within {CONNECT_TIMEOUT_S} s ({type(error).__name__}); "
                    "check the address and that `dask scheduler` runs there."
                ) from None
            with client:
                yield client
            return
        if plan.kind == "slurm":
            from dask_jobqueue import SLURMCluster

            cluster = SLURMCluster(**slurm_cluster_kwargs(plan))
            cluster.scale(jobs=plan.workers)
        else:
            from distributed import LocalCluster
            from distributed.security import Security

            cluster = LocalCluster(
                n_workers=plan.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                protocol="tls://",
                security=Security.temporary(),  # mutual TLS with a certificate only this run holds
                memory_limit=plan.memory_per_worker,
                dashboard_address="127.0.0.1:0",  # a free loopback port: never a taken 8787 (Dask would warn; None means 8787), never all interfaces
                local_directory=str(local_directory) if local_directory else None,
            )
        with cluster, Client(cluster) as client:
            yield client

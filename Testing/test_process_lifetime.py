"""Whatever a command starts ends with it, however it is stopped (SIGKILL, SIGTERM, a normal exit).

The mechanism (:mod:`SCIsegLib.lifetime`) is tested on small process trees first (every mode, a daemonised
grandchild, a nested command, a command in a terminal's job), then every long ``sciseg`` command is
started and killed at the moment it has descendants: ``segment``, ``finetune`` (nnU-Net's spawn pool),
``run`` (Dask's worker processes), ``queue score`` and ``models install`` (mid-download, then resumed).
Each command runs with a mark of its own in its environment, inherited by all it starts (orphans included),
which is how :func:`process_tree.marked_processes` finds what is left.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from local_http import LocalServer
from process_tree import MARK_VARIABLE, describe, marked_processes, new_mark, wait_until_gone

from SCIsegLib import lifetime
from SCIsegLib.lifetime import GroupPlan, plan_binding
from SCIsegLib.phantom import Acquisition, make_phantom
from SCIsegLib.training import export
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
SMALL = Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guardian is tested on Linux (PR_SET_PDEATHSIG)")


# --- the decision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ids", "expected"), [
    ({"os_name": "nt", "pid": 5, "pgid": 1, "guarded_group": None, "terminal_foreground_pgid": None}, GroupPlan("job-object")),
    ({"os_name": "posix", "pid": 5, "pgid": 1, "guarded_group": "1", "terminal_foreground_pgid": None}, GroupPlan("covered")),
    ({"os_name": "posix", "pid": 5, "pgid": 1, "guarded_group": "7", "terminal_foreground_pgid": None},
     GroupPlan("own-group", leave_group=True)),  # a sciseg ancestor guards another group: this one needs its own
    ({"os_name": "posix", "pid": 5, "pgid": 5, "guarded_group": None, "terminal_foreground_pgid": None}, GroupPlan("own-group")),
    ({"os_name": "posix", "pid": 5, "pgid": 1, "guarded_group": None, "terminal_foreground_pgid": 1}, GroupPlan("terminal-job")),
    ({"os_name": "posix", "pid": 5, "pgid": 5, "guarded_group": None, "terminal_foreground_pgid": 5}, GroupPlan("terminal-job")),
    ({"os_name": "posix", "pid": 5, "pgid": 1, "guarded_group": None, "terminal_foreground_pgid": 9},
     GroupPlan("own-group", leave_group=True)),  # a background job of a terminal
])
def test_plan_binding(ids: dict, expected: GroupPlan) -> None:
    assert plan_binding(**ids) == expected


# --- the mechanism on small trees ------------------------------------------------------------------------

COMMAND = textwrap.dedent("""
    import os, subprocess, sys, time
    sys.path.insert(0, {repository!r})
    from SCIsegLib.lifetime import bind_descendants
    plan = bind_descendants()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # a daemonised grandchild: double fork, its parent exits at once, it is orphaned while the command lives
    subprocess.run([sys.executable, "-c", "import os, time\\nif os.fork() == 0:\\n    time.sleep(600)"])
    print(plan.mode, flush=True)
    sys.stdin.readline()
""")


def start_command(mark: str, **options) -> subprocess.Popen:
    environment = {**os.environ, MARK_VARIABLE: mark, **options.pop("env", {})}
    return subprocess.Popen([sys.executable, "-c", COMMAND.format(repository=str(REPOSITORY))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=environment, **options)


def others(mark: str, *commands: subprocess.Popen) -> list[psutil.Process]:
    """The processes carrying ``mark`` other than ``commands`` themselves."""
    return [p for p in marked_processes(mark) if p.pid not in {c.pid for c in commands}]


def assert_nothing_is_left(mark: str, timeout_s: float = 60.0) -> None:
    """Every process carrying ``mark`` has ended (the timeout is only a safety net)."""
    left = wait_until_gone(lambda: marked_processes(mark), timeout_s)
    assert not left, "still alive:\n" + describe(left)


def no_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY))
    except OSError:
        return True
    return False


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM", "normal exit"])
def test_every_descendant_ends_with_the_command(ending: str) -> None:
    if not no_terminal():
        pytest.skip("run from a terminal: the command would stay in the terminal's job (tested below)")
    mark = new_mark()
    command = start_command(mark)
    assert command.stdout.readline().strip() == "own-group"
    assert os.getpgid(command.pid) == command.pid  # it left pytest's group for one of its own
    assert len(others(mark, command)) >= 3  # guardian, child, orphaned grandchild
    if ending == "normal exit":
        command.stdin.write("\n")
        command.stdin.flush()
    else:
        command.send_signal(getattr(signal, ending))
    command.wait(timeout=60)
    assert_nothing_is_left(mark)


def test_a_nested_command_is_covered_by_the_outer_guardian() -> None:
    if not no_terminal():
        pytest.skip("run from a terminal: the command would stay in the terminal's job (tested below)")
    mark = new_mark()
    outer = start_command(mark)
    assert outer.stdout.readline().strip() == "own-group"
    inner = start_command(mark, env={lifetime.GROUP_VARIABLE: str(outer.pid)},
                          preexec_fn=lambda: os.setpgid(0, outer.pid))  # as if started by the outer command
    assert inner.stdout.readline().strip() == "covered"
    guardians = [p for p in others(mark, outer, inner) if lifetime.is_guardian(p)]
    assert len(guardians) == 1 and guardians[0].ppid() == outer.pid
    outer.kill()
    outer.wait(timeout=60)
    inner.wait(timeout=60)  # in the outer group: ended by the outer guardian
    assert_nothing_is_left(mark)


def test_in_a_terminals_job_the_command_keeps_its_group_and_its_descendants_still_end() -> None:
    mark = new_mark()
    controller, terminal = pty.openpty()

    def take_the_terminal() -> None:  # a new session whose controlling terminal is the pty: a shell's foreground job
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    command = subprocess.Popen([sys.executable, "-c", COMMAND.format(repository=str(REPOSITORY))], stdin=terminal,
                               stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=take_the_terminal,
                               env={**os.environ, MARK_VARIABLE: mark})
    os.close(terminal)
    try:
        assert command.stdout.readline().strip() == "terminal-job"
        assert os.getpgid(command.pid) == command.pid  # it is the job: the terminal's Ctrl-C reaches it and its children
        children = others(mark, command)
        assert len(children) >= 3
        wait_until_gone(lambda: [c for c in children if c.pid not in {p.pid for p in psutil.Process(command.pid).children()}],
                        timeout_s=30)  # the orphaned grandchild was re-parented to the command (subreaper)
        time.sleep(2 * lifetime.SNAPSHOT_INTERVAL_S)  # the guardian's next record includes them all
        command.kill()
        command.wait(timeout=60)
        assert_nothing_is_left(mark)
    finally:
        os.close(controller)


FORKED_WORKERS = textwrap.dedent("""
    import multiprocessing, sys, time
    sys.path.insert(0, {repository!r})
    from SCIsegLib import cancel
    cancel.install()  # as `python -m SCIsegLib` does
    fork = multiprocessing.get_context("fork")

    def waiting_in_c(pid):
        with open(f"/proc/{{pid}}/wchan") as wchan:
            return "futex" in wchan.read()

    with cancel.checked():  # every command runs in this mode
        semaphore = fork.Semaphore(0)
        for wait in (False, True):  # SIGTERM at once (during the fork's aftermath), then while it waits
            worker = fork.Process(target=semaphore.acquire)  # waits in C, as an idle pool worker waits for a task
            worker.start()
            deadline = time.monotonic() + 30  # a safety net only
            while wait and not waiting_in_c(worker.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            worker.terminate()  # what Pool.terminate does to each worker
            worker.join(30)
            print(worker.exitcode)  # None: it did not end
            if worker.exitcode is None:
                worker.kill()
                worker.join()
""")


def test_forked_workers_of_a_command_end_on_sigterm() -> None:
    """nnU-Net's file-listing pool forks workers; ``Pool.terminate`` SIGTERMs and waits for them. With the command's
    handler a worker raised CancelledError (a traceback) or, signalled just before its wait, never ended: finetune hung."""
    result = subprocess.run([sys.executable, "-c", FORKED_WORKERS.format(repository=str(REPOSITORY))], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(-signal.SIGTERM)] * 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


# --- the end of a command -----------------------------------------------------------------------------------

ENDING = textwrap.dedent("""
    import atexit, gc, logging, sys
    sys.path.insert(0, {repository!r})
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after the command's
    logging.basicConfig(filename={log!r}, level=logging.INFO)
    unclosed = open({unclosed!r}, "w")  # never closed by this code: flushed when it is freed at exit
    unclosed.write("x" * 100_000)
    cycle = []
    cycle.append(cycle)
    sys.argv = ["sciseg", *{arguments!r}]
    logging.info("the command starts")
    from SCIsegLib.cli import console_main
    console_main()
""")


@pytest.mark.parametrize(("arguments", "code"), [(["models", "list"], 0), (["models", "info", "no-such-model"], 2)])
def test_a_command_ends_without_the_last_collections_and_otherwise_as_usual(tmp_path: Path, arguments: list[str],
                                                                             code: int) -> None:
    """With torch and nnU-Net loaded, the interpreter's last garbage collections took seconds of each command's end
    (and a Dask worker's nanny kills its process after 4 s): every object is frozen at exit instead, and the rest of
    the exit happens as before: the exit code, the other atexit handlers, logging and unclosed files flushed."""
    log, unclosed = tmp_path / "command.log", tmp_path / "unclosed.txt"
    script = ENDING.format(repository=str(REPOSITORY), log=str(log), unclosed=str(unclosed), arguments=arguments)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SCISEG_MODELS_DIR": str(tmp_path / "store")})
    assert result.returncode == code, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "frozen at exit: True", result.stdout
    assert "the command starts" in log.read_text()
    assert unclosed.read_text() == "x" * 100_000


# --- every long command, killed while it has descendants -------------------------------------------------

def sciseg(*arguments: str, mark: str = "", **options) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), **options.pop("env", {})}
    if mark:
        environment[MARK_VARIABLE] = mark
    return subprocess.Popen([sys.executable, "-m", "SCIsegLib", *arguments], env=environment, cwd=REPOSITORY,
                            stdin=subprocess.DEVNULL, **options)


def wait_for_descendant(command: subprocess.Popen, words: str, timeout_s: float = 300) -> None:
    """Wait until the command has a descendant whose command line contains ``words`` (or fail)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert command.poll() is None, f"the command ended (exit {command.returncode}) before starting {words!r}"
        if descendants_running(command, words):
            return
        time.sleep(0.05)
    pytest.fail(f"no descendant running {words!r} after {timeout_s} s")


def descendants_running(command: subprocess.Popen, words: str) -> list[psutil.Process]:
    """The command's descendants whose command line contains ``words`` (those that end while listed are left out)."""
    found = []
    for process in psutil.Process(command.pid).children(recursive=True):
        try:
            if words in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            pass
    return found


def kill_and_check(command: subprocess.Popen, mark: str, signum: int = signal.SIGKILL) -> None:
    assert others(mark, command), "the command had no descendant to test"
    command.send_signal(signum)
    command.wait(timeout=120)
    assert_nothing_is_left(mark)


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifetime") / "bids"
    for index, subject in enumerate(("01", "02")):
        case = make_phantom(seed=60 + index, acquisition=SMALL, lesions=1)
        source = write_image_atomic(case.image, root / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz")
        export.export_correction(root=root, source=source, cord=case.cord, lesion=case.lesion, rater="sim")
    return root


def start_finetune(dataset: Path, work: Path, data_augmentation_processes: int, mark: str) -> subprocess.Popen:
    return sciseg("finetune", "--base", str(DEMO_MODEL), "--dataset", str(dataset), "--name", "killed", "--work",
                  str(work), "--epochs", "3", "--iterations", "2", "--device", "cpu",
                  env={"SCISEG_MODELS_DIR": str(work / "store"), "nnUNet_n_proc_DA": str(data_augmentation_processes)},
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, mark=mark)


@pytest.mark.slow
def test_finetune_killed_in_nnunets_pool_leaves_no_pool_worker(learning_loop, tmp_path: Path) -> None:
    mark = new_mark()
    command = start_finetune(learning_loop.dataset, tmp_path / "work", 0, mark)  # a new work folder: nnU-Net preprocesses
    wait_for_descendant(command, "spawn_main")  # nnU-Net's fingerprint pool is running
    kill_and_check(command, mark)


@pytest.mark.slow
def test_finetune_killed_while_training_leaves_no_data_augmentation_worker(learning_loop, tmp_path: Path) -> None:
    dataset = learning_loop.dataset
    # the loop's dataset as nnU-Net preprocessed it: training starts without the fingerprint and preprocessing pools,
    # so the command's only spawned processes are the data augmentation workers
    shutil.copytree(learning_loop.preprocessed, tmp_path / "work" / "preprocessed" / dataset.name)
    mark = new_mark()
    command = start_finetune(dataset, tmp_path / "work", 2, mark)  # batchgenerators' worker processes feed the trainer
    fold = tmp_path / "work" / "results" / dataset.name / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_all"
    deadline = time.monotonic() + 600  # a safety net only

    def training() -> bool:  # nnU-Net logs "Epoch 0" once its data augmentation workers gave their first batches
        return any("Epoch 0" in log.read_text() for log in fold.glob("training_log_*.txt"))

    while not training():
        assert command.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    workers = descendants_running(command, "spawn_main")
    assert len(workers) >= 2, describe(workers)  # the nnUNet_n_proc_DA=2 augmentation workers, alive while it trains
    kill_and_check(command, mark)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cohort_run_leaves_no_dask_worker(bids: Path, tmp_path: Path, signum: int) -> None:
    mark = new_mark()
    command = sciseg("run", "--bids", str(bids), "-o", str(tmp_path / "derivatives"), "--model", "sciseg-demo",
                     "--device", "cpu", "--workers", "1", "--progress", "jsonl",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, mark=mark)
    wait_for_descendant(command, "spawn_main")  # Dask's worker process
    kill_and_check(command, mark, signum)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_segment_and_queue_score_leave_nothing(bids: Path, tmp_path: Path, signum: int) -> None:
    scans = sorted(str(p) for p in bids.rglob("*_T2w.nii.gz") if "derivatives" not in p.parts)
    for arguments in (["segment", *scans, "-o", str(tmp_path / "out"), "--model", str(DEMO_MODEL), "--device", "cpu",
                       "--progress", "jsonl"],
                      ["queue", "score", *scans, "--queue", str(tmp_path / "queue.json"), "--model", str(DEMO_MODEL),
                       "--device", "cpu"]):
        mark = new_mark()
        command = sciseg(*arguments, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, mark=mark)
        if arguments[0] == "segment":
            assert json.loads(command.stdout.readline())  # its first progress event: the model is loading
        else:
            wait_for_descendant(command, "")  # the guardian is there from the start
        kill_and_check(command, mark, signum)


def test_models_install_killed_mid_download_leaves_nothing_and_resumes(tmp_path: Path) -> None:
    from test_models import make_model_folder, zip_folder

    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")
    payload = archive.read_bytes()
    store = tmp_path / "store"
    with LocalServer() as server:
        server.served.files["/m.zip"] = payload
        server.served.hold_after_bytes = 0  # headers sent, then the body waits: the command is mid-download
        mark = new_mark()
        command = sciseg("models", "install", server.url("/m.zip"), "--name", "m", env={"SCISEG_MODELS_DIR": str(store)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, mark=mark)
        partial = store / ".downloads" / "m.zip.part"
        wait_until_gone(lambda: not partial.is_file(), timeout_s=120)
        kill_and_check(command, mark)
        server.served.release.set()
        resumed = sciseg("models", "install", server.url("/m.zip"), "--name", "m", env={"SCISEG_MODELS_DIR": str(store)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert resumed.wait(timeout=120) == 0
    assert sorted(p.name for p in (store / ".downloads").iterdir()) == []  # the partial file was used, then removed
    assert (store / "m").is_dir()

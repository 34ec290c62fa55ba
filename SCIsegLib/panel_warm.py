"""The Slicer panel's warm engine, without Qt: which one to keep loaded, when to start, restart or end it.

:class:`PanelEngines` holds the panel's :class:`~SCIsegLib.warm_client.WarmEngines` (one engine per model and
engine settings, each a child ``python -m SCIsegLib engine serve`` run by PythonSlicer: torch never enters Slicer's
process). The panel's controller calls :meth:`PanelEngines.want` from its 200 ms timer with the options Segment
would run, so the engine starts in the background as soon as the module is open with a model chosen (the first
case included), and a Segment click takes it through :class:`~SCIsegLib.warm_run.EngineRun`.

* Started only when it can run: the modules ``sciseg segment`` imports are installed here and the model is
  installed (else the click goes cold, and says why as it does today). Checked once per model and settings;
  again after a dependency or model install (:meth:`forget_checks`).
* One engine at a time: choosing another model or device ends the previous one (its memory goes back).
* Restarted in the background when it ended other than by its idle exit (a crash, a kill, an engine ended because
  it refused a request for weights that changed on disk); not after its idle exit (its memory stays free until the
  next click, which starts it again); not after three crashes (``failed``: the click goes cold).
* Ended by :meth:`close` (the module's cleanup: Reload, Slicer exit). Its stdin is a pipe from Slicer, so it
  also ends when Slicer dies, however.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import dependencies, models
from .panel import Action, modules_needed
from .runner import RunOptions, default_log_dir
from .warm_client import WarmEngine, WarmEngines
from .warm_run import engine_settings, warm_path_for

#: Minutes without a request after which the engine exits and gives its memory back.
IDLE_MINUTES = 10.0
#: Seconds the module's cleanup waits for an engine to end before it is killed.
CLOSE_S = 5.0


def why_not_warm(options: RunOptions, missing: Callable[[tuple[str, ...]], list[str]] = dependencies.missing_modules,
                 resolve: Callable[[str], object] = models.resolve_model) -> str | None:
    """Why no engine is started for ``options`` (one sentence), or None when it can be."""
    absent = missing(modules_needed(Action.SEGMENT))
    if absent:
        return f"no warm engine: {', '.join(absent)} not installed."
    if options.extra_arguments:
        return "no warm engine: the options include arguments only `sciseg segment` takes."
    try:
        resolve(options.model)
    except Exception as error:  # noqa: BLE001 - a model that is not installed: the cold path says it on Segment
        return f"no warm engine: {error}"
    return None


def engine_key(options: RunOptions) -> str:
    return json.dumps([options.model, engine_settings(options)], sort_keys=True)


class PanelEngines:
    """The panel's warm engines. ``engines``: a :class:`WarmEngines` (default: PythonSlicer's, logs in the user
    data folder); ``missing``/``resolve``: the dependency and model checks (:func:`why_not_warm`)."""

    def __init__(self, python_executable: str | None, *, engines: WarmEngines | None = None,
                 missing: Callable[[tuple[str, ...]], list[str]] = dependencies.missing_modules,
                 resolve: Callable[[str], object] = models.resolve_model, log_dir: Path | None = None) -> None:
        if engines is None:
            log = (log_dir or default_log_dir()) / "engine.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            engines = WarmEngines(python_executable=python_executable, idle_minutes=IDLE_MINUTES, log_path=log)
        self.engines = engines
        self.missing, self.resolve = missing, resolve
        self.checks: dict[str, str | None] = {}  # engine key -> why no engine (None: it can run)

    def forget_checks(self) -> None:
        """Dependencies or a model were installed: check again."""
        self.checks.clear()

    def want(self, options: RunOptions) -> WarmEngine | None:
        """From the panel's timer: the engine for ``options``, started in the background (or restarted after a crash)
        when it can run here, the others ended; None when it cannot (:attr:`checks` says why). Never blocks."""
        key = engine_key(options)
        if key not in self.checks:
            self.checks[key] = why_not_warm(options, self.missing, self.resolve)
        if self.checks[key] is not None:
            return None
        engine = self.engines.get(options.model, engine_settings(options), start=False)
        for other in self.engines.engines.values():
            if other is not engine and other.state in ("starting", "ready"):
                other.close(timeout_s=0)  # idle (the panel segments one scan at a time): nothing to wait for
        if engine.state == "absent" or (engine.state == "ended" and (engine.exit_event or {}).get("reason") != "idle"):
            try:
                engine.start()  # first time, or it ended other than idle: a crash, a kill, a refusal
            except OSError as error:  # PythonSlicer could not start: Segment goes cold, as before
                self.checks[key] = f"no warm engine: {error.strerror or error}."
                return None
        return engine

    def for_click(self, options: RunOptions) -> WarmEngine | None:
        """The engine a Segment click with ``options`` goes to, or None (the cold child)."""
        engine = self.want(options)
        return engine if warm_path_for(engine, options) else None

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """End every engine (the module's cleanup): its pipe closes, it stops a running request and exits; killed
        after ``timeout_s``."""
        for engine in self.engines.engines.values():
            engine.close(timeout_s=timeout_s)

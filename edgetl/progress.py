"""Progress of the long jobs, shown one way: a rich bar on a terminal, one plain line per step in a log, nothing
when disabled (``--quiet``).

A stage opens ``steps`` with its RunContext's switch and log; code deep inside it (the accuracy-aware layer search)
opens ``substeps``, which report under whatever bar is open and stay silent when none is (a library call).

>>> with steps(len(artifacts), "export", enabled=ctx.progress, log=ctx.log) as bar:
...     for artifact in artifacts:
...         bar.show(f"{artifact.name} ...")  # what the bar says while it works
...         make(artifact)
...         bar.advance(artifact.name)
export 1/6 onnx-fp32 (2.3 s)
>>> with substeps(len(layers), "onnx-int8-static-acc: layer") as search:
...     search.advance("conv_3 agreement 98.10%")
quantize: onnx-int8-static-acc: layer 1/59 conv_3 agreement 98.10% (0.4 s)

Training's bar (``edgetl.train.loop.progress_bar``) is built by ``bar`` too.
"""

from __future__ import annotations

import contextvars
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MAX_LINES = 100  # a log gets at most about this many lines per bar: every k-th step beyond it
_DETAIL = "{task.fields[detail]}"

Mode = Literal["off", "bar", "lines"]

# The innermost open Steps of this thread: what ``substeps`` reports under.
_ACTIVE: contextvars.ContextVar[Steps | None] = contextvars.ContextVar("edgetl_progress", default=None)


def bar(*fields: str, enabled: bool = True, auto_refresh: bool = True, console: Console | None = None) -> Progress:
    """The rich Progress every edgetl bar is: description, bar, n/N, elapsed time, then ``fields`` (TextColumn
    templates such as ``"loss {task.fields[loss]:.4f}"``); silent when not ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    *(TextColumn(f) for f in fields), disable=not enabled, auto_refresh=auto_refresh, console=console)


class Steps:
    """``total`` steps of one job, reported as they finish; a context manager (see ``steps`` and ``substeps``)."""

    def __init__(self, total: int, description: str, *, mode: Mode, log: Callable[[str], None],
                 parent: Steps | None = None, console: Console | None = None, max_lines: int = MAX_LINES):
        self.total, self.description, self.log, self.parent = max(int(total), 0), description, log, parent
        self.mode: Mode = mode if self.total else "off"
        self.done = 0
        self.every = max(1, math.ceil(self.total / max(max_lines, 1)))
        self._console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._owns_progress = False
        self._token: contextvars.Token | None = None
        self._last = _now()

    def __enter__(self) -> Steps:
        if self.mode == "bar":
            shared = self.parent or _ACTIVE.get()
            if shared is not None and shared._progress is not None:  # one live display: a task on the open bar
                self._progress = shared._progress
            else:
                # Redrawn on each step, not by a timer thread: a bench stage's timed calls share the CPU with it.
                self._progress = bar(_DETAIL, auto_refresh=False, console=self._console)
                self._progress.start()
                self._owns_progress = True
            self._task = self._progress.add_task(("  " if self.parent else "") + self.description,
                                                 total=self.total, detail="")
            self._progress.refresh()
        self._token = _ACTIVE.set(self)
        self._last = _now()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        if self._progress is None:
            return
        if self.parent is not None:  # a finished sub-job leaves no bar behind
            self._progress.remove_task(self._task)
        elif exc[0] is None and self.done < self.total:  # fewer steps than foreseen (a search that ended early)
            self._progress.update(self._task, total=self.done)
        self._progress.refresh()
        if self._owns_progress:
            self._progress.stop()
        self._progress = None

    def advance(self, detail: str = "", *, reused: bool = False) -> None:
        """One step finished; ``detail`` says which (an artifact, a layer and what it measured). A ``reused`` step
        (its record was fresh: a rerun) moves the bar but writes no log line, so a rerun's log stays short."""
        self.done += 1
        now = _now()
        seconds, self._last = now - self._last, now
        if self._progress is not None:
            self._progress.update(self._task, advance=1, detail=detail, refresh=True)
        elif self.mode == "lines" and not reused and (self.done % self.every == 0 or self.done >= self.total):
            self.log(self.line(detail, seconds))

    def show(self, detail: str) -> None:
        """Name what the current step is doing (on the bar; a log gets its line when the step ends)."""
        if self._progress is not None:
            self._progress.update(self._task, detail=detail, refresh=True)

    def line(self, detail: str, seconds: float) -> str:
        """A log's line for the step just done: ``export 2/6 onnx-int8-static (3.1 s)``, under a parent
        ``quantize: onnx-int8-static-acc: layer 12/59 conv_3 (0.4 s)``."""
        root = self
        while root.parent is not None:
            root = root.parent
        prefix = f"{root.description}: " if root is not self else ""
        return f"{prefix}{self.description} {self.done}/{self.total}{' ' + detail if detail else ''} ({seconds:.1f} s)"


def steps(total: int, description: str, *, enabled: bool = True, log: Callable[[str], None] = print,
          console: Console | None = None, max_lines: int = MAX_LINES) -> Steps:
    """Progress of a job of ``total`` steps named ``description``: a rich bar when ``console`` (rich's own,
    stdout, as training's bar) is a terminal, else one ``log`` line per step that was not reused (every k-th beyond
    ``max_lines``, and the last); nothing when not ``enabled`` or there is nothing to do."""
    if not enabled or total <= 0:
        return Steps(total, description, mode="off", log=log)
    if console is None:
        from rich import get_console

        console = get_console()
    return Steps(total, description, mode="bar" if console.is_terminal else "lines", log=log, console=console,
                 max_lines=max_lines)


def substeps(total: int, description: str, *, max_lines: int = MAX_LINES) -> Steps:
    """Steps of a part of the job whose ``steps`` are open (shown under them, in their way); silent when none is."""
    parent = _ACTIVE.get()
    if parent is None or parent.mode == "off":
        return Steps(total, description, mode="off", log=print)
    return Steps(total, description, mode=parent.mode, log=parent.log, parent=parent, console=parent._console,
                 max_lines=max_lines)


def _now() -> float:
    return time.perf_counter()

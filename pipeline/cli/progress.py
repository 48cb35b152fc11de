"""Progress drawn on a console with rich: a deploy's steps, uploads and runs, and a tuning search's
measurements. The steps report through callbacks; only this module knows how they look."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:  # the deploy flow loads TVM: only when a deploy runs, so `invoke --list` stays quick
    from pipeline.deploy.flow import DeployCallbacks, Step


class ConsoleProgress:
    """Draws a deploy's progress callbacks on a console: a spinner per step, bars for the uploads and runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bars: Progress | None = None
        self._bar_ids: dict[str, TaskID] = {}
        self._step_text = ""

    def callbacks(self) -> "DeployCallbacks":
        from pipeline.deploy.flow import DeployCallbacks

        return DeployCallbacks(
            on_step=self.step,
            on_line=self.line,
            on_warning=self.warning,
            on_upload=self.upload,
            on_run=self.run,
        )

    @contextmanager
    def step(self, step: "Step") -> Iterator[None]:
        self._step_text = step.text
        if step.kind == "push":
            transfer = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with self._showing(Progress(*transfer, console=self.console)):
                yield
        elif step.kind == "run":
            counted = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with self._showing(Progress(*counted, console=self.console)) as bars:
                self._bar_ids["run"] = bars.add_task(step.text, total=step.total)
                yield
        else:
            with self.console.status(step.text):
                yield

    @contextmanager
    def _showing(self, bars: Progress) -> Iterator[Progress]:
        with bars:
            self._bars, self._bar_ids = bars, {}
            try:
                yield bars
            finally:
                self._bars = None

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def warning(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True, style="yellow")

    def upload(self, name: str, sent: int, size: int) -> None:
        if self._bars is None:
            return
        if name not in self._bar_ids:
            self._bar_ids[name] = self._bars.add_task(f"{self._step_text} {name}", total=size)
        self._bars.update(self._bar_ids[name], completed=sent)

    def run(self, phase: str, index: int, count: int, ms: float) -> None:
        if self._bars is not None:
            description = f"{self._step_text}: {phase} {index}/{count}"
            self._bars.update(self._bar_ids["run"], advance=1, description=description)


class MeasuringBar:
    """A tuning search's bar, "Measuring on <board>": it appears with the first measurement, not while the
    model is imported. Use it as a context, so the bar is gone however the search ends."""

    def __init__(self, console: Console, where: str) -> None:
        columns = (
            TextColumn("Measuring on {task.fields[where]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._progress = Progress(*columns, console=console)
        self._where = where
        self._bar: TaskID | None = None

    def __enter__(self) -> "MeasuringBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def measured(self, count: int, total: int) -> None:
        if self._bar is None:
            self._progress.start()
            self._bar = self._progress.add_task("tune", total=total, where=self._where)
        self._progress.update(self._bar, completed=count)

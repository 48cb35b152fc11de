"""What a nightly run tells people: a short text summary (terminal, cron mail, CI log) and a static
HTML report with one latency-over-time plot per board and model. The HTML embeds its plots, so the
single file can be mailed, archived or served as is."""

import base64
import html
import io
import math
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
from matplotlib.dates import date2num  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator  # noqa: E402

from pipeline.nightly.history import Entry, History  # noqa: E402
from pipeline.nightly.loop import NightlyOutcome, PointOutcome  # noqa: E402

MAX_TICKS = 8  # nights labelled on a time axis; more would overlap at the plot's width
REPORT_NAME = "index.html"
SUMMARY_NAME = "summary.txt"
MARKERS = {"regression": ("^", "tab:red"), "improvement": ("v", "tab:green")}
UNCONFIRMED = {
    "same_build": "same build",
    "not_confirmed": "noise",
    "inconclusive": "inconclusive",
    "cannot_confirm": "cannot confirm",
}


def nightly_summary_lines(outcome: NightlyOutcome) -> list[str]:
    """Confirmed changes first, each with the tasks that moved and its likely causes; then failures and
    the flags the A/B session did not confirm."""
    regressions, improvements = outcome.with_change("regression"), outcome.with_change("improvement")
    head = (
        f"Nightly {outcome.started}: {_count(outcome.outcomes, 'point')} measured, "
        f"{_count(regressions, 'regression')}, {_count(improvements, 'improvement')}, {len(outcome.failures)} failed"
    )
    states = [o.confirmation.state for o in outcome.unconfirmed if o.confirmation is not None]
    unconfirmed = [f"{states.count(state)} {label}" for state, label in UNCONFIRMED.items() if state in states]
    lines = [head + (f"; flags not confirmed: {', '.join(unconfirmed)}" if unconfirmed else "")]
    for point in sorted(outcome.outcomes, key=_rank):
        lines.append(point_line(point))
        direction = point.alarm or (point.verdict.change if point.verdict is not None else None)
        lines += [f"    {'faster' if direction == 'improvement' else 'slower'} task: {task}" for task in point.tasks]
        lines += [f"    likely cause: {cause.detail}" for cause in point.causes]
        if point.confirmation is not None:
            lines += [f"    experiment: {note}" for note in point.confirmation.experiments]
    if outcome.interrupted:
        names = ", ".join(point.name for point in outcome.not_measured)
        lines.append(f"INTERRUPTED: not measured: {names} (everything above is stored)")
    return lines


def _count(items: list[PointOutcome], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _rank(outcome: PointOutcome) -> int:
    if outcome.alarm == "regression":
        return 0
    if outcome.error is not None:
        return 1
    if outcome.alarm is not None:
        return 2
    return 3 if outcome.unconfirmed else 4


def point_line(outcome: PointOutcome) -> str:
    """One line per point, printed as it is measured and again in the summary: the comparison with the
    point's history, then what the A/B session on the board made of a flag."""
    name = outcome.point.name
    if outcome.error is not None:
        return f"FAILED       {name}: {outcome.error}"
    verdict = outcome.verdict
    if verdict is None:
        return f"first        {name}: median {outcome.median_ms:.2f} ms (no baseline yet)"
    confirmation = outcome.confirmation
    if outcome.alarm is not None:
        label = outcome.alarm.upper() if outcome.alarm == "regression" else outcome.alarm
    elif outcome.unconfirmed and confirmation is not None:
        label = "noise" if confirmation.state in ("not_confirmed", "same_build") else "unconfirmed"
    else:
        label = verdict.change
    flagged = f"flagged {verdict.change}, " if outcome.unconfirmed else ""
    line = (
        f"{label:<12} {name}: {flagged}median {verdict.current_median_ms:.2f} ms vs {verdict.baseline_median_ms:.2f} ms "
        f"(x{verdict.ratio:.2f}; {verdict.current_runs} vs {verdict.baseline_runs} runs, {verdict.reason})"
    )
    line = f"{line}; {confirmation.reason}" if confirmation is not None else line
    return f"{line}; bisect: {outcome.culprit}" if outcome.culprit else line


def write_report(history: History, outcome: NightlyOutcome, directory: Path) -> Path:
    """Write index.html and summary.txt into `directory`; returns the HTML file."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = nightly_summary_lines(outcome)
    (directory / SUMMARY_NAME).write_text("\n".join(summary) + "\n")
    points = sorted({(o.point.board, o.point.model) for o in outcome.outcomes if o.result_id is not None})
    sections = []
    for board, model in points:
        series = history.series(board, model)
        if series:
            image = base64.b64encode(_png(latency_figure(board, model, series))).decode()
            sections.append(
                f"<h2>{html.escape(board)} / {html.escape(model)}</h2>\n"
                f'<img alt="latency of {html.escape(model)} on {html.escape(board)} over time" '
                f'src="data:image/png;base64,{image}">'
            )
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Nightly {html.escape(outcome.started)}</title>"
        "<style>body{font-family:sans-serif;max-width:72rem;margin:2rem auto}"
        # the summary's lines name tasks and causes and run long: wrapped, they stay on the page
        "pre{background:#f4f4f4;padding:1rem;white-space:pre-wrap;overflow-wrap:anywhere}"
        "img{max-width:100%}</style></head><body>\n"
        f"<h1>Nightly {html.escape(outcome.started)}</h1>\n"
        f"<pre>{html.escape(chr(10).join(summary))}</pre>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = directory / REPORT_NAME
    path.write_text(page)
    return path


def latency_figure(board_name: str, model: str, series: list[Entry]) -> Figure:
    """Every run as a faint dot, the median as a line, flagged points marked: noise, level and steps
    stay visible together. The time axis names each night by its date and the pipeline commit it ran."""
    times = [datetime.fromisoformat(entry.result.created.replace("Z", "+00:00")) for entry in series]
    figure, axes = plt.subplots(figsize=(9, 3.2), dpi=100)
    for when, entry in zip(times, series):
        runs_ms = entry.result.timings.runs_ms
        axes.scatter([date2num(when)] * len(runs_ms), runs_ms, s=6, color="0.6", alpha=0.5, linewidths=0)
    medians = [entry.result.timings.stats.median_ms for entry in series]
    axes.plot(date2num(times), medians, color="tab:blue", marker="o", markersize=3, linewidth=1, label="median")
    for change, (marker, color) in MARKERS.items():
        flagged = [(date2num(t), m) for t, m, e in zip(times, medians, series) if e.confirmed_change == change]
        if flagged:
            xs, ys = zip(*flagged)
            axes.scatter(xs, ys, marker=marker, s=90, color=color, zorder=3, label=change)
    noise = [
        (date2num(t), m)
        for t, m, e in zip(times, medians, series)
        if e.change in MARKERS and e.confirmed_change is None
    ]
    if noise:
        xs, ys = zip(*noise)
        axes.scatter(
            xs,
            ys,
            marker="o",
            s=70,
            facecolors="none",
            edgecolors="tab:orange",
            zorder=3,
            label="flag not confirmed by A/B",
        )
    failed = [(date2num(t), m) for t, m, e in zip(times, medians, series) if not e.result.check.passed]
    if failed:
        xs, ys = zip(*failed)
        axes.scatter(xs, ys, marker="x", s=70, color="black", zorder=3, label="output check failed")
    kind = series[-1].result.timing_kind
    axes.set_title(f"{model} on {board_name} ({kind})")
    axes.set_ylabel("latency per run (ms)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    ticks = _night_ticks(len(times))
    axes.xaxis.set_major_locator(FixedLocator([date2num(times[i]) for i in ticks]))
    axes.xaxis.set_major_formatter(FixedFormatter([_night_label(times, series, i) for i in ticks]))
    axes.set_xlabel("night (UTC) and pipeline commit")
    if len(times) == 1:  # one night: matplotlib's default ±0.06 days around it would show hours
        axes.set_xlim(date2num(times[0]) - 1, date2num(times[0]) + 1)
    axes.tick_params(axis="x", labelsize="small")
    figure.tight_layout()
    return figure


def _night_ticks(nights: int) -> list[int]:
    """The nights that get a tick: every one up to MAX_TICKS, else every second (third, ...) one counted
    back from the last, so tonight is always labelled and the labels keep an even distance."""
    step = math.ceil(nights / MAX_TICKS)
    return list(range(nights - 1, -1, -step))[::-1]


def _night_label(times: list[datetime], series: list[Entry], index: int) -> str:
    """'2026-11-25' over the short commit ('2026-11-25 02:30' when two nights share a date)."""
    same_day = len({when.date() for when in times}) < len(times)
    date = times[index].strftime("%Y-%m-%d %H:%M" if same_day else "%Y-%m-%d")
    commit = series[index].provenance.pipeline_commit
    short = "no commit" if commit is None else commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    return f"{date}\n{short}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

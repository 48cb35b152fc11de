"""Does the nightly cry wolf, and does it still catch real slowdowns? Rates on the `local` board.

Real deploys and real A/B sessions on this machine, on a private history database:
1. `--nights` unchanged nights of the matrix (`--models`, 20 runs each): each night runs today's way
   first (deploy without per-task profiling, compared with the night before by compare_samples, no A/B)
   and then the nightly's (compared with its recent nights; a flag on a changed deployment confirmed A/B
   on the board, a flag on the baseline's very build dismissed without one). Printed: today's flags, the
   nightly's flags, what became of them, the alarms (confirmed changes), and the time of a night both ways.
2. `--trials` nights with the board's threads going from 2 to 1 (a copy of boards/local.yaml), each
   against the unchanged nights' history: how many are confirmed, and whether the threads are named.
3. `--trials` nights where a small CNN (`net.onnx`, two 3x3 convs) got 3x wider channels (both below
   Winograd's channel threshold, so both builds have the same tasks), each against
   a history of the narrow one: how many are confirmed, and whether the slower conv tasks are named.
4. `--trials` A/B sessions of an unchanged build with the current side's samples scaled by 1.10 (an
   injected +10%): how many are confirmed as a regression.
5. resnet18 with the tuned record of its largest direct conv (a short `invoke tune` of that conv on
   `local`, its search starting from the default schedule), three nights; then `--trials` nights each
   with the record replaced by the slowest schedule tuning measured, by the next-fastest one, and
   removed: the A/B outcomes, how many name the record store, how many confirm it by experiment
   (tonight's model built with the baseline's records), and how many name the conv as a slower task.

    PIPELINE_SSHD_PORT=2222 .venv/bin/python benchmarks/nightly_alarms.py [--nights 11] [--trials 10]
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import onnx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.board.profile import load_board  # noqa: E402
from pipeline.board.sshd import board_endpoint  # noqa: E402
from pipeline.deploy.flow import deploy_once  # noqa: E402
from pipeline.nightly.confirm import confirm_on_board  # noqa: E402
from pipeline.nightly.history import History  # noqa: E402
from pipeline.nightly.loop import (  # noqa: E402
    DeployPoint,
    Matrix,
    MatrixEntry,
    NightlyOutcome,
    real_confirm,
    real_deploy,
    run_nightly,
)
from pipeline.nightly.provenance import RunProvenance  # noqa: E402
from pipeline.nightly.report import point_line  # noqa: E402
from pipeline.stats import PairedVerdict, compare_pairs, compare_samples  # noqa: E402

PROVENANCE = RunProvenance(pipeline_commit="benchmark", record_store_version="unchanged")
RUNS = 20
WARMUP = 3
RECORD_TRIALS = 8  # a short tuning run: its slowest schedule is the "slower record"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nights", type=int, default=11, help="unchanged nights (comparisons: nights-1 per model)")
    parser.add_argument("--trials", type=int, default=10, help="slowed nights, and injected +10%% A/B sessions")
    parser.add_argument("--models", default="tiny,mobilenet_v2,resnet18", help="comma-separated")
    parser.add_argument("--slow-models", default="mobilenet_v2,resnet18", help="models of the threads trials")
    parser.add_argument("--parts", default="nights,threads,wider,injected,records", help="comma-separated parts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nightly-alarms-"))
    models = args.models.split(",")
    try:
        with board_endpoint(load_board("local").ssh):
            parts = args.parts.split(",")
            if "nights" in parts or "threads" in parts:
                history_path = unchanged_nights(work, models, args.nights)
            if "threads" in parts:
                threads_trials(work, history_path, args.slow_models.split(","), args.trials)
            if "wider" in parts:
                wider_trials(work, args.trials)
            if "injected" in parts:
                injected_trials(work, models, args.trials)
            if "records" in parts:
                records_trials(work, args.trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def matrix_for(board: str, models: Sequence[str]) -> Matrix:
    return Matrix(matrix=[MatrixEntry(boards=[board], models=list(models), runs=RUNS, warmup=WARMUP)])


def unchanged_nights(work: Path, models: list[str], nights: int) -> Path:
    """Today's flow and the nightly's, alternating night by night on the same builds."""
    history_path = work / "history.sqlite"
    matrix = matrix_for("local", models)
    deploy = real_deploy(results_dir=work / "results")
    previous: dict[str, list[float]] = {}
    today_flags, today_seconds, new_seconds = 0, [], []
    states: Counter[str] = Counter()
    flags = alarms = comparisons = 0
    with History(history_path) as history:
        for night in range(nights):
            started = time.monotonic()
            for model in models:
                result = deploy_once("local", model, runs=RUNS, warmup=WARMUP, results_dir=work / "today").result
                if model in previous:
                    today_flags += compare_samples(previous[model], result.timings.runs_ms).flagged
                previous[model] = result.timings.runs_ms
            today_seconds.append(time.monotonic() - started)
            started = time.monotonic()
            outcome = run_nightly(
                matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=work / "locks"
            )
            new_seconds.append(time.monotonic() - started)
            for point in outcome.outcomes:
                if point.verdict is not None:
                    comparisons += 1
                    flags += point.verdict.flagged
                    if point.confirmation is not None:
                        states[point.confirmation.state] += 1
                    alarms += point.alarm is not None
            print(f"night {night + 1}: today {today_seconds[-1]:.1f} s, nightly {new_seconds[-1]:.1f} s", flush=True)
            for line in night_lines(outcome):
                print(f"    {line}", flush=True)
    print(f"Unchanged matrix ({', '.join(models)}; {RUNS} runs a point), {nights} nights, {comparisons} comparisons:")
    print(f"  today's flow (night against night): {today_flags} flagged of {comparisons}")
    print(f"  nightly: {flags} flagged against their recent nights; not confirmed: {dict(states)}")
    print(f"  nightly: {alarms} alarms (confirmed changes) of {comparisons} comparisons")
    today, new = statistics.median(today_seconds), statistics.median(new_seconds)
    print(f"  time of a night (median): today {today:.1f} s, nightly {new:.1f} s (x{new / today:.2f})")
    print(f"  slowest nightly night {max(new_seconds):.1f} s (x{max(new_seconds) / today:.2f} of today's median)")
    return history_path


def night_lines(outcome: NightlyOutcome) -> list[str]:
    return [point_line(point) for point in outcome.outcomes]


def night_on_a_copy(history_path: Path, copy: Path, matrix: Matrix, deploy: DeployPoint, work: Path) -> NightlyOutcome:
    """One trial night against a copy of the history, so every trial starts from the same nights."""
    shutil.copy(history_path, copy)
    with History(copy) as history:
        return run_nightly(matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=work / "locks")


def threads_trials(work: Path, history_path: Path, models: list[str], trials: int) -> None:
    """Each trial: one night with threads 1 against a copy of the unchanged history (threads 2)."""
    profile = yaml.safe_load((ROOT / "boards" / "local.yaml").read_text())
    board = work / "local-1-thread.yaml"
    board.write_text(yaml.safe_dump({**profile, "threads": 1}))
    matrix = matrix_for(str(board), models)
    deploy = real_deploy(results_dir=work / "results")
    confirmed = named = total = 0
    ratios = []
    for trial in range(trials):
        outcome = night_on_a_copy(history_path, work / f"threads-{trial}.sqlite", matrix, deploy, work)
        for point in outcome.outcomes:
            total += 1
            if point.alarm == "regression":
                confirmed += 1
                named += any(cause.kind == "threads" for cause in point.causes)
            if point.confirmation is not None and point.confirmation.verdict is not None:
                ratios.append(point.confirmation.verdict.ratio)
        for line in night_lines(outcome):
            print(f"    threads trial {trial + 1}: {line}", flush=True)
    ratio = f", A/B median ratio {statistics.median(ratios):.2f}" if ratios else ""
    print(f"Threads 2 -> 1 ({', '.join(models)}): {confirmed} of {total} confirmed, threads named in {named}{ratio}")


def wider_trials(work: Path, trials: int) -> None:
    """Each trial: the narrow net's history (three nights), then one night of the 3x wider net."""
    from models.graph import GraphBuilder

    paths = {}
    for channels in (8, 24):
        g = GraphBuilder(0, "data", (1, 3, 32, 32))
        x = g.relu(g.conv(g.relu(g.conv(g.input, channels, 3)), channels, 3))
        path = work / f"net-{channels}" / "net.onnx"
        path.parent.mkdir()
        onnx.save(g.finish("net", g.gemm(g.flatten(g.global_avg_pool(x), features=channels), 10, gain=1.0)), path)
        paths[channels] = path
    deploy = real_deploy(results_dir=work / "results")
    history_path = work / "narrow.sqlite"
    narrow = matrix_for("local", [str(paths[8])])
    with History(history_path) as history:
        for _ in range(3):
            run_nightly(narrow, deploy, history, PROVENANCE, confirm=real_confirm(narrow), lock_dir=work / "locks")
    wide = matrix_for("local", [str(paths[24])])
    confirmed = named = 0
    for trial in range(trials):
        outcome = night_on_a_copy(history_path, work / f"wider-{trial}.sqlite", wide, deploy, work)
        [point] = outcome.outcomes
        confirmed += point.alarm == "regression"
        named += bool(point.tasks) and point.tasks[0].startswith("fused_conv2d")
        print(f"    wider trial {trial + 1}: {night_lines(outcome)[0]}", flush=True)
        for task in point.tasks:
            print(f"        slower task: {task}", flush=True)
    print(f"Convs 3x wider (net.onnx): {confirmed} of {trials} confirmed, a slower conv task named in {named}")


def injected_trials(work: Path, models: list[str], trials: int) -> None:
    """A/B of one build against itself, the current side's samples scaled by 1.10 before deciding."""

    def slower(base: Sequence[float], cur: Sequence[float], final: bool) -> PairedVerdict:
        return compare_pairs(base, [ms * 1.10 for ms in cur], final=final)

    results = {
        model: deploy_once("local", model, runs=RUNS, warmup=WARMUP, results_dir=work / "today").result
        for model in models
    }
    outcomes: Counter[str] = Counter()
    pairs = []
    for trial in range(trials):
        model = models[trial % len(models)]
        result = results[model]
        confirmation = confirm_on_board("local", model, result, result, decide=slower)
        change = confirmation.confirmed_change or confirmation.state
        outcomes[change] += 1
        pairs.append(len(confirmation.baseline_ms))
        print(f"    injected trial {trial + 1} ({model}): {confirmation.reason}", flush=True)
    print(
        f"Injected +10% ({', '.join(models)}): {outcomes['regression']} of {trials} confirmed "
        f"({dict(outcomes)}; median {statistics.median(pairs):.0f} pairs)"
    )


def records_trials(work: Path, trials: int) -> None:
    """resnet18's history with the tuned record of its largest direct conv (three nights), then `trials`
    nights for each change of the store: the record replaced by the slowest schedule tuning measured, by
    the next-fastest one, and removed (the conv then gets its default schedule, where the search began)."""
    from pipeline.compiler import builder
    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.records.store import load_store, save_record
    from pipeline.tuning.tuner import measured_schedules, tune

    model, board = resolve_model("resnet18"), load_board("local")
    direct = builder.build(model, board, records_dir=work / "no-records")
    convs = [e for e in direct.coverage.result_entries() if e.workload.startswith("conv2d NCHW")]
    task = max(convs, key=lambda entry: entry.flops).task
    tuned = work / "records-tuned"
    started = time.monotonic()
    tune(model, board, RECORD_TRIALS, records_dir=tuned, cache_dir=work / "tuning", only=(task,))
    measured = measured_schedules(model, board, task, cache_dir=work / "tuning")
    print(
        f"    tuned {task} with {RECORD_TRIALS} trials in {time.monotonic() - started:.0f} s; measured: "
        + ", ".join(f"{record.provenance.latency_us / 1000:.2f}" for record in measured)
        + " ms",
        flush=True,
    )
    stores = {"slowest": work / "records-slowest", "next-fastest": work / "records-next", "removed": work / "empty"}
    save_record(measured[-1], stores["slowest"])
    save_record(measured[1], stores["next-fastest"])
    stores["removed"].mkdir()
    matrix = matrix_for("local", ["resnet18"])
    history_path = work / "records.sqlite"

    def night(store: Path, history: History) -> NightlyOutcome:
        provenance = RunProvenance(pipeline_commit="benchmark", record_store_version=load_store(store).version)
        deploy = real_deploy(results_dir=work / "results", records_dir=store)
        return run_nightly(matrix, deploy, history, provenance, confirm=real_confirm(matrix), lock_dir=work / "locks")

    with History(history_path) as history:
        for _ in range(3):
            night(tuned, history)
    for change, store in stores.items():
        outcomes: Counter[str] = Counter()
        named = tested = conv_named = 0
        for trial in range(trials):
            shutil.copy(history_path, work / f"records-{change}-{trial}.sqlite")
            with History(work / f"records-{change}-{trial}.sqlite") as history:
                [point] = night(store, history).outcomes
            confirmation = point.confirmation
            outcomes[(confirmation.confirmed_change or confirmation.state) if confirmation else "no A/B"] += 1
            named += any(cause.kind == "record_store" for cause in point.causes)
            experiments = confirmation.experiments if confirmation is not None else []
            tested += any(note.startswith("tuning records changed") and ": confirmed," in note for note in experiments)
            conv_named += any(line.startswith(f"{task} +") for line in point.tasks)
            print(f"    records {change} trial {trial + 1}: {point_line(point)}", flush=True)
            for note in experiments:
                print(f"        experiment: {note}", flush=True)
        print(
            f"Record of {task} {change} (resnet18): A/B {dict(outcomes)} of {trials}; record store named in "
            f"{named}, confirmed by experiment in {tested}, the conv named a slower task in {conv_named}",
            flush=True,
        )


if __name__ == "__main__":
    main()

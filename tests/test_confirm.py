"""A/B confirmation on the real `local` board: a real slowdown is confirmed and its slower tasks named,
a flag on an unchanged build is dismissed as noise, and a baseline build missing from the cache is
rebuilt when a build today is the same build."""

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from tuned_records import tuned_and_slower

from models.graph import GraphBuilder
from pipeline.board.profile import load_board
from pipeline.board.sshd import SshEndpoint
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.rewrites.winograd import MIN_CHANNELS
from pipeline.deploy.results import DeployResult
from pipeline.deploy.timing import summarize
from pipeline.nightly.confirm import ConfirmSettings, confirm_on_board
from pipeline.nightly.history import History
from pipeline.nightly.loop import Matrix, MatrixEntry, real_confirm, real_deploy, run_nightly
from pipeline.nightly.provenance import RunProvenance
from pipeline.nightly.report import nightly_summary_lines
from pipeline.records.store import load_store
from pipeline.tvm_release.catalog import get_release
from pipeline.upgrade.upgrade_check import build_under

PROVENANCE = RunProvenance(pipeline_commit="abc", record_store_version=None)


def small_net(channels: int, size: int) -> onnx.ModelProto:
    """Two 3x3 convs and a dense layer on a `size`x`size` image; the convs' cost grows with `channels` squared."""
    g = GraphBuilder(0, "data", (1, 3, size, size))
    x = g.relu(g.conv(g.input, channels, 3))
    x = g.relu(g.conv(x, channels, 3))
    x = g.flatten(g.global_avg_pool(x), features=channels)
    return g.finish("net", g.gemm(x, 10, gain=1.0))


def save_versions(tmp_path: Path, size: int, channels: tuple[int, int]) -> tuple[Path, Path]:
    """The same model file (`net.onnx`, so the same nightly point) before and after it got wider; both
    below Winograd's channel threshold, so both builds have the same tasks and only their times differ."""
    assert max(channels) < MIN_CHANNELS
    paths = []
    for folder, width in zip(("before", "after"), channels, strict=True):
        path = tmp_path / folder / "net.onnx"
        path.parent.mkdir()
        onnx.save(small_net(width, size), path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def net_versions(tmp_path: Path) -> tuple[Path, Path]:
    """A net small enough that timings jitter by x3 (about 0.1 ms), and a wider one."""
    return save_versions(tmp_path, 32, (8, MIN_CHANNELS - 8))


@pytest.fixture
def much_slower_versions(tmp_path: Path) -> tuple[Path, Path]:
    """A net whose second conv costs about 36 times more after it got wider, so that the slowdown stays
    far past x2 on a loaded 2-core host, where fixed costs per run dilute it."""
    return save_versions(tmp_path, 64, (4, MIN_CHANNELS - 8))


@pytest.fixture
def recommented(net_versions: tuple[Path, Path], tmp_path: Path) -> Path:
    """The `before` model with another doc string: another build (its key hashes the file), the same code."""
    model = onnx.load(net_versions[0])
    model.doc_string = "the same network, saved again"
    path = tmp_path / "recommented" / "net.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    return path


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite") as store:
        yield store


def test_a_real_slowdown_is_confirmed_exits_1_and_names_the_slower_tasks(
    embedded_endpoint: SshEndpoint, much_slower_versions: tuple[Path, Path], history: History, tmp_path: Path
) -> None:
    before, after = much_slower_versions
    deploy = real_deploy(results_dir=tmp_path / "results")
    outcomes = []
    for path in (before, after):
        matrix = Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(path)], runs=10, warmup=1)])
        outcomes.append(
            run_nightly(matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=tmp_path / "locks")
        )
    assert outcomes[0].exit_code == 0
    night = outcomes[1]
    assert night.exit_code == 1
    [point] = night.with_change("regression")
    assert point.confirmation is not None and point.confirmation.verdict is not None
    assert point.confirmation.verdict.ratio > 2 and point.confirmation.verdict.p_value < 0.01
    assert point.confirmation.baseline_tasks and point.confirmation.current_tasks
    assert point.tasks and point.tasks[0].startswith("fused_conv2d")
    lines = nightly_summary_lines(night)
    assert lines[1].startswith(f"REGRESSION   local/{after}: median ")
    assert "; A/B confirmed: x" in lines[1]
    assert lines[2].startswith("    slower task: fused_conv2d") and "of 2 conv tasks unchanged" in lines[2]
    [_, stored] = history.series("local", "net")
    assert stored.confirmed_change == "regression"


def test_a_flag_on_an_equally_fast_build_is_dismissed_as_noise(
    embedded_endpoint: SshEndpoint,
    net_versions: tuple[Path, Path],
    recommented: Path,
    history: History,
    tmp_path: Path,
) -> None:
    """The night before is planted ten times as fast (a quiet machine, say; this net runs in about 0.1 ms,
    where timings jitter by x3): tonight's build is flagged against it, but on the board, interleaved
    with the baseline's build, it is no slower."""
    before, _ = net_versions
    deploy = real_deploy(results_dir=tmp_path / "results")
    baseline = Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(before)], runs=10, warmup=1)])
    history.add(ten_times_faster(deploy(baseline.points()[0])), PROVENANCE)
    # Two builds of the same net can differ by a few percent (code layout), and a loaded 2-core host
    # resolves that: the factor says which difference counts, so "equally fast" is within x1.5 here.
    matrix = Matrix(factor=1.5, matrix=[MatrixEntry(boards=["local"], models=[str(recommented)], runs=10, warmup=1)])
    night = run_nightly(matrix, deploy, history, PROVENANCE, confirm=real_confirm(matrix), lock_dir=tmp_path / "locks")
    [point] = night.outcomes
    assert point.verdict is not None and point.verdict.change == "regression"
    assert night.exit_code == 0 and night.with_change("regression") == []
    assert point.confirmation is not None and point.confirmation.state == "not_confirmed"
    assert point.causes == [] and point.tasks == []
    lines = nightly_summary_lines(night)
    assert lines[0].endswith("0 regressions, 0 improvements, 0 failed; flags not confirmed: 1 noise")
    assert lines[1].startswith(f"noise        local/{recommented}: flagged regression, median ")
    assert "A/B: noise, not confirmed" in lines[1]
    [_, stored] = history.series("local", "net")
    assert stored.change == "regression" and stored.confirmed_change is None
    assert stored.confirmation is not None and stored.confirmation.state == "not_confirmed"


def ten_times_faster(result: DeployResult) -> DeployResult:
    runs = [ms / 10 for ms in result.timings.runs_ms]
    return replace(result, timings=replace(result.timings, runs_ms=runs, stats=summarize(runs)))


def test_a_baseline_build_gone_from_the_cache_is_rebuilt_when_today_builds_the_same(
    embedded_endpoint: SshEndpoint, net_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    before, _ = net_versions
    result = real_deploy(results_dir=tmp_path / "results")(
        Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(before)], runs=5, warmup=1)]).points()[0]
    )
    shutil.rmtree(result.build.directory)
    settings = ConfirmSettings(pairs=6, max_pairs=6)
    confirmation = confirm_on_board("local", str(before), result, result, settings=settings)
    assert confirmation.rebuilt_baseline and "(baseline rebuilt)" in confirmation.reason
    assert len(confirmation.baseline_ms) == len(confirmation.current_ms) == 6
    assert confirmation.state != "confirmed"


def test_a_baseline_build_that_today_cannot_reproduce_cannot_confirm(
    embedded_endpoint: SshEndpoint, net_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    """The model file changed since the baseline was built, and its build is gone: no A/B."""
    before, after = net_versions
    deploy = real_deploy(results_dir=tmp_path / "results")
    old = deploy(Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(before)], runs=5)]).points()[0])
    new = deploy(Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(after)], runs=5)]).points()[0])
    gone = replace(old, build=replace(old.build, directory=tmp_path / "evicted"))
    confirmation = confirm_on_board("local", str(after), gone, new)
    assert confirmation.state == "cannot_confirm"
    assert confirmation.reason.startswith(f"cannot confirm: baseline build gone (a build today is {new.build.key}")


def test_a_tvm_upgrade_that_is_not_the_cause_is_ruled_out_by_experiment(
    embedded_endpoint: SshEndpoint, net_versions: tuple[Path, Path], tmp_path: Path
) -> None:
    """The baseline ran `before` built by TVM 0.26; tonight `after` (4x wider) built by 0.27 is slower.
    Tonight's model built by 0.26 too, timed in the same session, is as slow: the upgrade is not why."""
    before, after = net_versions
    board = load_board("local")
    deploy = real_deploy(results_dir=tmp_path / "results")
    built_026 = build_under(get_release("0.26"), "local", board, resolve_model(str(before)), True, print)
    measured = deploy(Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(before)], runs=5)]).points()[0])
    baseline = replace(measured, build=built_026, tvm_version=built_026.tvm_version)
    tonight = deploy(Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(after)], runs=5)]).points()[0])
    confirmation = confirm_on_board("local", str(after), baseline, tonight)
    assert confirmation.confirmed_change == "regression"
    [experiment] = confirmation.experiments
    assert experiment.startswith(
        f"TVM version changed ({built_026.tvm_version} -> {tonight.tvm_version}): not the cause, "
        "tonight's model built with TVM 0.26 runs "
    )


def test_records_that_made_tonight_slower_are_named_the_cause_by_experiment(
    embedded_endpoint: SshEndpoint,
    much_slower_versions: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    history: History,
    tmp_path: Path,
) -> None:
    """The baseline night ran a net with the tuned record of its larger conv; tonight's store has a slower
    record for it (the slowest schedule the tuning run measured). The A/B session confirms the
    regression, and tonight's model built with the baseline's records (the copy the nightly kept) runs as
    fast as the baseline."""
    _, net = much_slower_versions
    tuned, slower = tuned_and_slower(resolve_model(str(net)), "fused_conv2d1_add_relu", tmp_path_factory)
    versions = [load_store(store).version for store in (tuned, slower)]
    matrix = Matrix(matrix=[MatrixEntry(boards=["local"], models=[str(net)], runs=10, warmup=1)])
    nights = [
        run_nightly(
            matrix,
            real_deploy(results_dir=tmp_path / "results", records_dir=store),
            history,
            RunProvenance(pipeline_commit="abc", record_store_version=version),
            confirm=real_confirm(matrix),
            lock_dir=tmp_path / "locks",
        )
        for store, version in zip((tuned, slower), versions, strict=True)
    ]
    assert nights[1].exit_code == 1
    [point] = nights[1].with_change("regression")
    assert [cause.kind for cause in point.causes if cause.kind == "record_store"] == ["record_store"]
    assert point.confirmation is not None
    [experiment] = point.confirmation.experiments
    assert experiment.startswith(
        f"tuning records changed ({versions[0]} -> {versions[1]}): confirmed, tonight's model built with the "
        f"records {versions[0]} (the baseline's build) restores "
    )
    assert any(task.startswith("fused_conv2d1_add_relu +") for task in point.tasks)

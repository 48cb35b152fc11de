"""The one A/B session (pipeline/deploy/ab_session.py) the nightly's confirmation, upgrade-check and
migrate share: the board is checked once for all sides, every side is pushed to its own folder, the
sides run interleaved (A B, B A, ...), and a side that cannot run is refused in one line naming it."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import pytest

from models.graph import GraphBuilder
from pipeline.board import doctor
from pipeline.board.profile import load_board
from pipeline.board.remote import CommandResult
from pipeline.board.session import Board
from pipeline.board.sshd import SshEndpoint
from pipeline.compiler import builder
from pipeline.compiler.builder import BuildArtifact
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.deploy import inputs
from pipeline.deploy.ab_session import AbSide, SampleSize, interleaved, open_ab_session
from pipeline.errors import MAX_LINE, PipelineError


def small_net(channels: int) -> onnx.ModelProto:
    g = GraphBuilder(0, "data", (1, 3, 16, 16))
    x = g.relu(g.conv(g.input, channels, 3))
    x = g.flatten(g.global_avg_pool(x), features=channels)
    return g.finish("net", g.gemm(x, 10, gain=1.0))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildArtifact, BuildArtifact]:
    """Two builds of the same input shape: a narrow net and a wider one."""
    folder = tmp_path_factory.mktemp("ab")
    built = []
    for channels in (4, 12):
        path = folder / f"net{channels}.onnx"
        onnx.save(small_net(channels), path)
        built.append(builder.build(resolve_model(str(path)), load_board("local"), cache_dir=folder / "cache"))
    return built[0], built[1]


def sides(builds: tuple[BuildArtifact, BuildArtifact]) -> list[AbSide]:
    return [AbSide("A", builds[0], 1), AbSide("B", builds[1], 1)]


def test_rounds_alternate_who_goes_first() -> None:
    assert interleaved(2, 0, 4) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert interleaved(2, 1, 3) == [1, 0, 0, 1]  # more pairs continue the alternation
    assert interleaved(3, 0, 2) == [0, 1, 2, 2, 1, 0]


def test_a_sample_has_enough_runs_to_last_and_splits_them_over_processes() -> None:
    assert SampleSize.for_model(0.1, 10, 200.0, 3, 1) == SampleSize(2000, 3, 1)
    assert SampleSize.for_model(50.0, 10, 200.0, 3, 1) == SampleSize(10, 1, 1)


def test_both_sides_are_pushed_to_their_own_folders_after_one_board_check(
    embedded_endpoint: SshEndpoint, two_builds: tuple[BuildArtifact, BuildArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[dict[str, Path]] = []
    real_check = doctor.require_ready

    def counted(board: Board, files: dict[str, Path]) -> None:
        checks.append(files)
        real_check(board, files)

    monkeypatch.setattr(doctor, "require_ready", counted)
    _, input_file = inputs.make_input(two_builds[0].input_shape)
    with open_ab_session(load_board("local"), sides(two_builds), input_file) as session:
        libraries = [d.library for d in session.deployments]
        found = session.board.run(
            " && ".join(f"test -f {lib}" for lib in libraries), timeout_s=30, cwd=session.board.remote_dir
        )
    [files] = checks
    assert {two_builds[0].library, two_builds[1].library} <= set(files.values())
    assert libraries[0] != libraries[1] and all(two_builds[i].key in libraries[i] for i in (0, 1))
    assert found.exit_code == 0


def test_samples_run_in_the_order_asked_and_profiles_come_per_side(
    embedded_endpoint: SshEndpoint, two_builds: tuple[BuildArtifact, BuildArtifact]
) -> None:
    _, input_file = inputs.make_input(two_builds[0].input_shape)
    with open_ab_session(load_board("local"), sides(two_builds), input_file) as session:
        scripts: list[str] = []
        real_run = session.board.run

        def recorded(command: str, **options: Any) -> CommandResult:
            scripts.append(command)
            return real_run(command, **options)

        session.board.run = recorded  # type: ignore[method-assign]
        order = interleaved(2, 0, 2)
        samples = session.samples(order, SampleSize(4, 2, 0))
        tasks = session.fastest_tasks(2)
    libraries = [d.library for d in session.deployments]
    assert order == [0, 1, 1, 0]
    assert _sides_in(scripts[0], libraries) == [0, 0, 1, 1, 1, 1, 0, 0]  # 2 runner processes per sample
    assert len(samples) == 4 and all(sample > 0 for sample in samples)
    assert all(tasks) and {k.name for k in tasks[0]} == {k.name for k in tasks[1]}


def _all(text: str, word: str) -> list[int]:
    return [i for i in range(len(text)) if text.startswith(word, i)]


def _sides_in(script: str, libraries: list[str]) -> list[int]:
    """Which side's library each runner command of the script loads, in order."""
    hits = sorted((at, side) for side, library in enumerate(libraries) for at in _all(script, f"--lib {library}"))
    return [side for _, side in hits]


def test_a_side_that_cannot_run_is_refused_in_one_line_naming_it(
    embedded_endpoint: SshEndpoint, two_builds: tuple[BuildArtifact, BuildArtifact]
) -> None:
    wrong = replace(two_builds[1], arch="aarch64" if two_builds[1].arch != "aarch64" else "x86_64")
    _, input_file = inputs.make_input(two_builds[0].input_shape)
    with pytest.raises(PipelineError) as refused:
        with open_ab_session(load_board("local"), [AbSide("A", two_builds[0], 1), AbSide("B", wrong, 1)], input_file):
            pass
    line = refused.value.line()
    assert line.startswith("error: A/B side B: the model library is ") and len(line) <= MAX_LINE
    assert "\n" not in line

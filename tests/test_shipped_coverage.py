"""The shipped records match today's pipeline: for every model with shipped records on each shipped
target, the build's tasks (import, rewrites, fusion; nothing compiled) run tuned schedules for at
least the profile's share of conv/dense FLOPs. A pipeline change that stops them applying (a rewrite
that takes tuned convs, a fusion change) fails here before it lands."""

import pytest

from pipeline.board.profile import BoardProfile, TargetSpec, available_boards, load_board
from pipeline.compiler.coverage import coverage_lines, resolve_policy
from pipeline.compiler.importer.model_file import resolve_model
from pipeline.compiler.planned_coverage import planned_coverage
from pipeline.errors import PipelineError
from pipeline.paths import RECORDS_DIR
from pipeline.records.store import load_store


def _profiles() -> list[BoardProfile]:
    """The shipped profiles that are complete (rk3399.yaml holds placeholders for a real board's address)."""
    found = []
    for name in available_boards():
        try:
            found.append(load_board(name))
        except PipelineError:
            continue
    return found


PROFILES = _profiles()


def _profile_for(target: TargetSpec) -> BoardProfile | None:
    """The shipped profile whose target is the records' (a profile's `mcpu: host` stands for the CPU
    the records name: the profile run on that CPU)."""
    for board in PROFILES:
        if board.target.mcpu == "host":
            board = board.model_copy(update={"target": board.target.with_cpu(target.mcpu)})
        if board.target == target:
            return board
    return None


def _shipped() -> list[tuple[str, str]]:
    """(board, model) for every model the shipped records were tuned for, per target."""
    found: dict[tuple[str, str], None] = {}
    for stored in load_store(RECORDS_DIR).records:
        board = _profile_for(stored.record.target)
        if board is not None:
            found[(board.name, stored.record.provenance.model)] = None
    return sorted(found)


SHIPPED = _shipped()


def test_every_shipped_record_target_has_a_profile_and_models() -> None:
    boards = {board for board, _ in SHIPPED}
    assert {"local", "rk3399-emu"} <= boards


@pytest.mark.parametrize(("board_name", "model_name"), SHIPPED, ids=[f"{b}-{m}" for b, m in SHIPPED])
def test_shipped_records_cover_the_profiles_threshold(board_name: str, model_name: str) -> None:
    target = next(
        s.record.target
        for s in load_store(RECORDS_DIR).records
        if s.record.provenance.model == model_name and (b := _profile_for(s.record.target)) and b.name == board_name
    )
    board = _profile_for(target)
    assert board is not None
    coverage = planned_coverage(resolve_model(model_name), board)
    threshold = resolve_policy(board.coverage).min_tuned_flops
    assert coverage.tuned_share >= threshold, "\n".join(coverage_lines(coverage))

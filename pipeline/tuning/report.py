"""What `invoke tune` prints: a tuning run's outcome as plain text lines."""

from pipeline.board.profile import BoardProfile
from pipeline.records.store import shown
from pipeline.tuning.tuner import TuneResult


def tune_lines(result: TuneResult, profile: BoardProfile, choices_only: bool = False) -> list[str]:
    """The choices measured, tasks tuned, the records written, and what is left for a later run."""
    lines = [f"choice {shown(path)}" for path in result.choices]
    if choices_only:
        return [*lines, f"measured {len(result.choices)} choices in {result.seconds:.0f} s on {profile.name}"]
    emulated = ", emulated: the records prove the loop, not the board's speed" if profile.emulated else ""
    lines += [
        f"tuned {len(result.tuned)} tasks with {result.trials} trials in {result.seconds:.0f} s on {profile.name}{emulated}"
    ]
    if result.tuned:
        lines.append(f"{len(result.from_default)} of them started from their measured default schedule")
    lines.extend(f"record {shown(path)}" for path in result.saved)
    if result.already_covered:
        lines.append(f"{len(result.already_covered)} tasks already had records for this target")
    if result.left_for_later:
        lines.append(
            f"{len(result.left_for_later)} smaller tasks left for a later run: {', '.join(result.left_for_later)}"
        )
    return lines

"""The search of a bisection, as Chromium's Pinpoint does it: the bad end is first confirmed slower than the
good one, then a binary search over the commits between them, each timed A/B against the good end, narrows
the range down to the first commit that is slower. Pure logic: the comparison of one commit against the good
end is passed in, so the search is tested with a fake one and runs on the board with the real one.

A budget bounds it (commits measured, board seconds). The search never guesses: a comparison that cannot
tell, or a budget spent, leaves the range it had narrowed to undecided, and the result says so."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

State = Literal["slower", "not_slower", "inconclusive"]


@dataclass(frozen=True)
class Measurement:
    """One commit timed against the good end: `ratio` is its median per-pair ratio (above 1 = slower)."""

    commit: str
    state: State
    ratio: float
    detail: str
    board_seconds: float


@dataclass(frozen=True)
class Budget:
    """Commits built (the good end counts) and board seconds the A/B sessions may take."""

    builds: int = 12
    board_seconds: float = 900.0

    def builds_needed(self, commits: int) -> int:
        """The good end, the bad end and the midpoints of a binary search over `commits` candidates."""
        return 2 + math.ceil(math.log2(commits)) if commits > 1 else 2


@dataclass(frozen=True)
class SearchResult:
    """`culprit` is the first slower commit when the search decided it. Otherwise `first_slower` is the
    earliest commit measured slower (None when the bad end is not) and `undecided` the commits before it,
    after the last one measured not slower, that the search could not tell apart; `reason` says why."""

    culprit: str | None
    first_slower: str | None
    last_not_slower: str | None  # None: the good end
    undecided: tuple[str, ...]
    measurements: tuple[Measurement, ...]
    reason: str

    @property
    def no_regression(self) -> bool:
        """The bad end was measured not slower than the good end: nothing to bisect."""
        return self.first_slower is None and not self.undecided


DEFAULT_BUDGET = Budget()
Compare = Callable[[str], Measurement]  # a commit -> its A/B against the good end


def bisect(commits: Sequence[str], compare: Compare, budget: Budget = DEFAULT_BUDGET) -> SearchResult:
    """The first commit of `commits` (oldest first, the bad end last; the good end is before the first)
    that `compare` finds slower than the good end, assuming the commits before it are not slower."""
    if not commits:
        raise ValueError("no commits between the good and the bad end")
    measured: list[Measurement] = []
    spent = 0.0

    def measure(index: int) -> Measurement:
        nonlocal spent
        result = compare(commits[index])
        measured.append(result)
        spent += result.board_seconds
        return result

    def result(culprit: str | None, low: int, high: int | None, reason: str) -> SearchResult:
        undecided = tuple(commits[low + 1 : len(commits) if high is None else high])
        first = None if high is None else commits[high]
        fine = None if low < 0 else commits[low]
        return SearchResult(culprit, first, fine, () if culprit else undecided, tuple(measured), reason)

    last = measure(len(commits) - 1)
    if last.state == "not_slower":
        return SearchResult(
            None, None, None, (), tuple(measured), f"the bad end is not slower than the good end ({last.detail})"
        )
    if last.state == "inconclusive":
        return result(None, -1, None, f"cannot tell whether the bad end is slower ({last.detail})")
    low, high = -1, len(commits) - 1  # low: last index known not slower (-1: the good end); high: first known slower
    while high - low > 1:
        builds = 1 + len(measured)
        if builds >= budget.builds:
            return result(None, low, high, f"the build budget ({budget.builds} commits) is spent")
        if spent >= budget.board_seconds:
            return result(None, low, high, f"the board-time budget ({budget.board_seconds:.0f} s) is spent")
        middle = (low + high) // 2
        step = measure(middle)
        if step.state == "slower":
            high = middle
        elif step.state == "not_slower":
            low = middle
        else:
            return result(None, low, high, f"cannot tell whether {commits[middle]} is slower ({step.detail})")
    return result(commits[high], low, high, "the commit before it is not slower, it is")

"""`invoke bisect` and the nightly's bisection of a confirmed regression: the model built at the commits between
a good and a bad revision of the pipeline (each in a worktree, pipeline/upgrade/revisions.py), each timed A/B
against the good revision's build on the board, and the binary search of pipeline/upgrade/bisect.py naming
the first commit that made it slower. The pairs are decided by the nightly's statistics (compare_pairs with
its factor). Every board folder the bisection pushed is removed at the end, whatever happened."""

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.board.profile import BoardProfile, load_board
from pipeline.board.session import open_board
from pipeline.compiler.builder import BuildArtifact
from pipeline.deploy import inputs
from pipeline.deploy.ab_session import AbSide, SampleSize, interleaved, open_ab_session
from pipeline.errors import PipelineError
from pipeline.paths import CACHE_DIR, RECORDS_DIR, ROOT
from pipeline.stats import DEFAULT_FACTOR, PairedVerdict, compare_pairs
from pipeline.upgrade import revisions
from pipeline.upgrade.bisect import DEFAULT_BUDGET, Budget, Measurement, State, bisect
from pipeline.upgrade.revisions import Revision

Progress = Callable[[str], None]
SAMPLE_PERCENTILE = 10  # a sample is a low percentile of its batch: other processes only ever add time


@dataclass(frozen=True)
class PairSettings:
    """How each commit is timed against the good end: `pairs` interleaved pairs (A B, B A, ...), each sample
    the lowest SAMPLE_PERCENTILE-th percentile of `processes` runner processes (a process can stay slow for
    its whole life) of `batch_runs` runs each. Pairs that cannot tell get `more_pairs` more, up to `max_pairs`,
    where a median ratio below the factor is not slower: compare_pairs's final rule, one-sided, since the
    search asks only whether a commit is slower (identical builds measured x0.8 on a loaded 2-core host)."""

    pairs: int = 8  # 8 pairs all one way reach the Wilcoxon test's p < 0.01
    more_pairs: int = 4
    max_pairs: int = 20
    batch_runs: int = 100  # runs cost little next to a runner start (about 1 s on a loaded 2-core host)
    processes: int = 3
    warmup: int = 1
    factor: float = DEFAULT_FACTOR


DEFAULT_PAIRS = PairSettings()


@dataclass(frozen=True)
class Step:
    """One commit built and timed against the good end."""

    revision: Revision
    build_key: str
    measurement: Measurement
    good_ms: list[float]
    current_ms: list[float]


@dataclass(frozen=True)
class BisectResult:
    """`culprit` is the first commit that made the model slower, when the search decided it; otherwise
    `undecided` lists the commits it could not tell apart (between the last one measured not slower and
    `first_slower`), and `no_regression` says the bad end was not slower at all."""

    board: str
    model: str
    good: Revision
    bad: Revision
    commits: int  # in good..bad on bad's first-parent line
    culprit: Revision | None
    first_slower: Revision | None
    last_not_slower: Revision  # the good end when no commit between was measured not slower
    undecided: list[Revision]
    no_regression: bool
    reason: str
    steps: list[Step] = field(default_factory=list)
    board_seconds: float = 0.0

    @property
    def builds(self) -> int:
        return 1 + len(self.steps)

    def line(self) -> str:
        """The one line the summary, the report and the history keep."""
        if self.culprit is not None:
            ratio = next(s.measurement.ratio for s in self.steps if s.revision == self.culprit)
            return f"culprit: {self.culprit.line()} (x{ratio:.2f} against {self.good.short})"
        if self.no_regression:
            detail = self.steps[0].measurement.detail if self.steps else self.reason
            return f"no culprit: {self.bad.short} is not slower than {self.good.short} ({detail})"
        before = self.first_slower.short if self.first_slower else f"{self.bad.short} (not confirmed slower)"
        return (
            f"undecided: between {self.last_not_slower.short} and {before}: {len(self.undecided)} commit(s) "
            f"not decided, {self.reason}"
        )


def bisect_regression(
    board_name: str,
    model: str,
    good: str,
    bad: str,
    *,
    budget: Budget = DEFAULT_BUDGET,
    settings: PairSettings = DEFAULT_PAIRS,
    on_progress: Progress | None = None,
    repo: Path = ROOT,
    cache_dir: Path = CACHE_DIR,
    records_dir: Path = RECORDS_DIR,
) -> BisectResult:
    """Name the first commit in good..bad that made `model` slower on `board`, within `budget`; one line
    (PipelineError) for an unknown or too old revision, a range the build budget cannot search, a failed build."""
    show = on_progress or (lambda line: None)
    profile = load_board(board_name)
    good_rev, bad_rev = revisions.resolve(good, repo), revisions.resolve(bad, repo)
    commits = revisions.first_parent_range(good_rev, bad_rev, repo)
    needed = budget.builds_needed(len(commits))
    if needed > budget.builds:
        raise PipelineError(
            f"{good_rev.short}..{bad_rev.short} has {len(commits)} commits: the search may build {needed}, "
            f"the budget is {budget.builds}",
            f"pass --max-builds {needed} or a narrower range",
        )
    by_sha = {r.sha: r for r in commits}
    show(f"Bisecting {len(commits)} commits of {good_rev.short}..{bad_rev.short} (at most {needed} builds)")

    def build(revision: Revision) -> BuildArtifact:
        return revisions.build_at(revision, board_name, model, show, repo, cache_dir, records_dir)

    pushed: set[str] = set()
    steps: list[Step] = []
    try:
        baseline = build(good_rev)

        def compare(sha: str) -> Measurement:
            revision = by_sha[sha]
            artifact = build(revision)
            show(f"Timing {revision.short} against {good_rev.short} on {profile.name} ({settings.pairs} pairs)")
            started = time.monotonic()
            pushed.update((baseline.key, artifact.key))
            good_ms, current_ms = _time_pair(profile, baseline, artifact, settings, settings.pairs)
            verdict = compare_pairs(good_ms, current_ms, settings.factor, final=len(good_ms) >= settings.max_pairs)
            while _state(verdict, settings.factor, False) == "inconclusive" and len(good_ms) < settings.max_pairs:
                show(f"  {revision.short}: cannot tell yet ({verdict.reason}); {settings.more_pairs} more pairs")
                more = _time_pair(profile, baseline, artifact, settings, settings.more_pairs)
                good_ms, current_ms = good_ms + more[0], current_ms + more[1]
                verdict = compare_pairs(good_ms, current_ms, settings.factor, final=len(good_ms) >= settings.max_pairs)
            state = _state(verdict, settings.factor, final=len(good_ms) >= settings.max_pairs)
            measured = Measurement(sha, state, verdict.ratio, verdict.reason, time.monotonic() - started)
            show(f"  {revision.short}: {state.replace('_', ' ')} ({verdict.reason})")
            steps.append(Step(revision, artifact.key, measured, good_ms, current_ms))
            return measured

        found = bisect([r.sha for r in commits], compare, budget)
    finally:
        _remove_pushed(profile, pushed)
    return BisectResult(
        board=profile.name,
        model=model,
        good=good_rev,
        bad=bad_rev,
        commits=len(commits),
        culprit=by_sha[found.culprit] if found.culprit else None,
        first_slower=by_sha[found.first_slower] if found.first_slower else None,
        last_not_slower=by_sha[found.last_not_slower] if found.last_not_slower else good_rev,
        undecided=[by_sha[sha] for sha in found.undecided],
        no_regression=found.no_regression,
        reason=found.reason,
        steps=steps,
        board_seconds=sum(s.measurement.board_seconds for s in steps),
    )


def _state(verdict: PairedVerdict, factor: float, final: bool) -> State:
    """Slower only when confirmed; on the final pairs any median ratio below the factor is not slower."""
    if verdict.state == "confirmed" and verdict.change == "regression":
        return "slower"
    if verdict.state == "not_confirmed" or verdict.change == "improvement" or (final and verdict.ratio < factor):
        return "not_slower"
    return "inconclusive"


def _time_pair(
    profile: BoardProfile, good: BuildArtifact, current: BuildArtifact, settings: PairSettings, pairs: int
) -> tuple[list[float], list[float]]:
    """The one place the bisection times: both builds pushed side by side with this revision's runtime and
    run interleaved (A B, B A, ...), in the one A/B session (pipeline/deploy/ab_session.py); returns the good and current samples, pair by pair."""
    if good.input_shape != current.input_shape:
        raise PipelineError(
            f"the builds take different inputs ({good.input_shape} and {current.input_shape})",
            "bisect a range where the model's input stays the same",
        )
    _, input_file = inputs.make_input(good.input_shape)
    sides = [AbSide("the good build", good, profile.threads), AbSide("this commit's build", current, profile.threads)]
    size = SampleSize(settings.batch_runs * settings.processes, settings.processes, settings.warmup)
    samples: list[list[float]] = [[], []]
    with open_ab_session(profile, sides, input_file) as session:
        order = interleaved(len(sides), 0, pairs)
        for side, sample in zip(order, session.samples(order, size)):
            samples[side].append(sample)
    return samples[0], samples[1]


def _remove_pushed(profile: BoardProfile, keys: set[str]) -> None:
    """The model folders the bisection pushed (the runtime and the input stay: deploys share them)."""
    if not keys:
        return
    folders = " ".join(shlex.quote(str(PurePosixPath("models") / key)) for key in sorted(keys))
    with open_board(profile) as session:
        session.run(f"rm -rf {folders}", cwd=session.remote_dir, timeout_s=60.0)

"""Revisions of the pipeline on the board: a clone of this repository with one commit injected that makes
a default-schedule rule slower (no register tile, so no vectors for convs): the bisection names that commit,
a range with no slower commit is no culprit, and bad revisions end in one line leaving nothing behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.board.profile import load_board
from pipeline.errors import PipelineError
from pipeline.paths import ROOT
from pipeline.upgrade.bisect import Budget
from pipeline.upgrade.culprit import PairSettings, bisect_regression
from pipeline.upgrade.revisions import FIRST_BUILD_REVISION

SCHEDULES = "pipeline/compiler/schedules/default_schedules.py"
TILE = "    return plan[spatial.index(position)]\n"
SLOW_TILE = "    return _pad([extents[spatial.index(position)]], parts, front=False)  # no tile, no vectors\n"
# The injected rule is ~1.7x slower; two identical builds of the tiny model measured up to x1.09 apart over 20
# pairs on this shared 2-core host, so the test asks for a change past x1.25 (the nightly's 1.05 is for boards).
PAIRS = PairSettings(factor=1.25)


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    return subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True, text=True).stdout


def commit(repo: Path, path: str, old: str, new: str, subject: str) -> str:
    file = repo / path
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new, 1))
    git(repo, "commit", "-qam", subject)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Path]:
    """This worktree's HEAD cloned, then: a README edit, the slow rule, a README edit."""
    clone = tmp_path_factory.mktemp("repo") / "pipeline"
    git(ROOT, "clone", "-q", "--no-checkout", str(ROOT), str(clone))
    git(clone, "fetch", "-q", str(ROOT), "HEAD")
    git(clone, "checkout", "-q", "--detach", "FETCH_HEAD")
    good = git(clone, "rev-parse", "HEAD").strip()
    harmless = commit(clone, "README.md", "# TVM edge-deployment pipeline", "# TVM edge pipeline", "README: title")
    slow = commit(clone, SCHEDULES, TILE, SLOW_TILE, "default schedules: no register tile")
    bad = commit(clone, "README.md", "# TVM edge pipeline", "# TVM edge-deployment pipeline", "README: title back")
    return {"path": clone, "good": good, "harmless": harmless, "slow": slow, "bad": bad}


def leftovers(clone: Path, cache: Path) -> list[str]:
    """Worktrees still registered, or still on disk, after a bisection."""
    registered = git(clone, "worktree", "list", "--porcelain").count("worktree ") - 1
    on_disk = [p.name for p in (cache / "revisions").glob("*") if p.name not in ("builds", "envs")]
    return [f"{registered} registered"] * bool(registered) + on_disk


def pushed(keys: list[str]) -> list[str]:
    board_models = Path(load_board("local").remote_dir) / "models"
    return [key for key in keys if (board_models / key).exists()]


def test_the_bisection_names_the_commit_that_made_the_convs_slower(
    repo: dict, tmp_path: Path, embedded_endpoint: object
) -> None:
    lines: list[str] = []
    result = bisect_regression(
        "local", "tiny", repo["good"], repo["bad"], settings=PAIRS, on_progress=lines.append,
        repo=repo["path"], cache_dir=tmp_path,
    )  # fmt: skip
    print("\n".join(lines + [result.line()]))
    assert result.culprit is not None and result.culprit.sha == repo["slow"], result.line()
    assert result.line().startswith(f"culprit: {repo['slow'][:12]} default schedules: no register tile (x")
    assert result.commits == 3 and result.builds <= Budget().builds_needed(3)
    assert leftovers(repo["path"], tmp_path) == []
    assert pushed([step.build_key for step in result.steps]) == []


def test_a_range_where_no_commit_is_slower_has_no_culprit(
    repo: dict, tmp_path: Path, embedded_endpoint: object
) -> None:
    result = bisect_regression(
        "local", "tiny", repo["good"], repo["harmless"], settings=PAIRS, repo=repo["path"], cache_dir=tmp_path
    )
    print(result.line())
    assert result.culprit is None and result.no_regression, result.line()
    assert result.line().startswith(f"no culprit: {repo['harmless'][:12]} is not slower than {repo['good'][:12]}")
    assert leftovers(repo["path"], tmp_path) == []


def test_a_commit_whose_build_fails_is_one_line_and_leaves_no_worktree(repo: dict, tmp_path: Path) -> None:
    clone = repo["path"]
    git(clone, "checkout", "-q", "--detach", repo["bad"])
    broken = commit(clone, "models/tiny.py", "import", "raise SystemExit('broken model')\nimport", "tiny: broken")
    try:
        with pytest.raises(PipelineError) as caught:
            bisect_regression("local", "tiny", repo["bad"], broken, settings=PAIRS, repo=clone, cache_dir=tmp_path)
        line = caught.value.line()
        assert line.startswith(f"error: the build at {broken[:12]} failed") and len(line) <= 300, line
        assert "\n" not in line
        assert leftovers(clone, tmp_path) == []
    finally:
        git(clone, "checkout", "-q", "--detach", repo["bad"])


def test_a_revision_whose_pins_cannot_be_installed_is_one_line_and_leaves_nothing(repo: dict, tmp_path: Path) -> None:
    clone = repo["path"]
    git(clone, "checkout", "-q", "--detach", repo["bad"])
    pins = "pyelftools==0.33\n"
    broken = commit(
        clone, "requirements.txt", pins, pins + "not-a-real-package-qq==1.0\n", "pins: one that exists nowhere"
    )
    try:
        with pytest.raises(PipelineError) as caught:
            bisect_regression("local", "tiny", repo["bad"], broken, settings=PAIRS, repo=clone, cache_dir=tmp_path)
        line = caught.value.line()
        assert line.startswith(f"error: cannot install the pins of {broken[:12]} (installing its pins): ERROR: No "), (
            line
        )
        assert len(line) <= 300 and "\n" not in line
        assert leftovers(clone, tmp_path) == [] and list((tmp_path / "revisions" / "envs").iterdir()) == []
    finally:
        git(clone, "checkout", "-q", "--detach", repo["bad"])


def bisect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "bisect", "--board", "local", "--model", "tiny", *args]
    return subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--good", "no-such-revision"], "error: unknown revision 'no-such-revision'"),
        (["--good", "HEAD", "--bad", "no-such-revision"], "error: unknown revision 'no-such-revision'"),
        (["--good", "HEAD~1", "--bad", "HEAD~2"], "is not an ancestor of"),
        (["--good", f"{FIRST_BUILD_REVISION}~1"], "is older than 1b49ce74b3d0, the first with invoke build"),
        (["--good", FIRST_BUILD_REVISION, "--max-builds", "3"], "the budget is 3 — fix: pass --max-builds"),
    ],
)
def test_bad_revisions_are_one_line_each(args: list[str], message: str) -> None:
    proc = bisect_cli(*args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert len(lines[0]) <= 300


def test_upgrade_check_refuses_a_revision_older_than_invoke_build() -> None:
    command = [sys.executable, "-m", "invoke", "upgrade-check", "--from-rev", f"{FIRST_BUILD_REVISION}~1"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: revision '{FIRST_BUILD_REVISION}~1' ({proc.stderr.split('(')[1][:12]}) is older than "
        f"1b49ce74b3d0, the first with invoke build — fix: name 1b49ce74b3d0 or a later commit"
    ]

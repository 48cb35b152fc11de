"""Revisions of the pipeline itself: a commit of this repository, checked out in a `git worktree` of its own
under CACHE_DIR/revisions/<sha>, builds a model with that revision's own `invoke build`, and this process
reads the build back (builder.load_build) to push and run it with this revision's runner.

A revision whose requirements.txt is this checkout's runs in this process's environment; another one gets
an environment of its own (CACHE_DIR/revisions/envs/<pins>/venv, created once: slow). Each revision builds
into a cache folder of its own (CACHE_DIR/revisions/builds/<sha>): revisions before the build key hashed its
recipe would otherwise find each other's builds. Both sides use this checkout's record store (PIPELINE_RECORDS),
so a comparison is of the pipeline's code, with the user's records. A worktree lives only while its build runs."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.compiler import builder
from pipeline.compiler.builder import BuildArtifact
from pipeline.errors import PipelineError, write_log
from pipeline.paths import CACHE_DIR, RECORDS_DIR, ROOT

# The first commit with `invoke build` (git log --reverse -- tasks.py): older revisions cannot build.
FIRST_BUILD_REVISION = "1b49ce74b3d056d94ea00b42ac98f42eb1169520"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Revision:
    """A commit of the pipeline, with the subject line a person recognises it by."""

    sha: str
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:12]

    def line(self) -> str:
        return f"{self.short} {self.subject}"


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def resolve(name: str, repo: Path = ROOT) -> Revision:
    """The commit `name` (a sha, branch, tag, HEAD~3) names, refused in one line when it is unknown or older
    than the first revision that has `invoke build`."""
    found = git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if found.returncode != 0 or not name.strip():
        raise PipelineError(f"unknown revision '{name}'", "name a commit of this repository (git log --oneline)")
    sha = found.stdout.strip()
    first = git(repo, "rev-parse", "--verify", "--quiet", f"{FIRST_BUILD_REVISION}^{{commit}}")
    if first.returncode != 0:
        raise PipelineError(
            f"this repository lacks the commit {FIRST_BUILD_REVISION[:12]} (the first with invoke build)",
            "fetch the full history (git fetch --unshallow)",
        )
    if git(repo, "merge-base", "--is-ancestor", FIRST_BUILD_REVISION, sha).returncode != 0:
        raise PipelineError(
            f"revision '{name}' ({sha[:12]}) is older than {FIRST_BUILD_REVISION[:12]}, the first with invoke build",
            f"name {FIRST_BUILD_REVISION[:12]} or a later commit",
        )
    return Revision(sha, git(repo, "log", "-1", "--format=%s", sha).stdout.strip())


def first_parent_range(good: Revision, bad: Revision, repo: Path = ROOT) -> list[Revision]:
    """The commits after `good` up to and including `bad` on bad's first-parent line, oldest first."""
    if good.sha == bad.sha:
        raise PipelineError(f"--good and --bad are both {good.short}", "name an older good and a newer bad revision")
    if git(repo, "merge-base", "--is-ancestor", good.sha, bad.sha).returncode != 0:
        raise PipelineError(
            f"{good.short} is not an ancestor of {bad.short}", "pass the older revision as --good, the newer as --bad"
        )
    listed = git(repo, "log", "--first-parent", "--reverse", "--format=%H %s", f"{good.sha}..{bad.sha}")
    commits = [
        Revision(*line.split(" ", 1)) if " " in line else Revision(line, "") for line in listed.stdout.splitlines()
    ]
    if not commits or commits[-1].sha != bad.sha:
        raise PipelineError(
            f"{bad.short} is not on a first-parent line from {good.short}",
            "pass a --good that --bad's branch descends from",
        )
    return commits


def head(repo: Path = ROOT) -> Revision:
    return resolve("HEAD", repo)


def has_changes(repo: Path = ROOT) -> bool:
    """The working tree differs from HEAD in a tracked file: its build is not HEAD's."""
    return bool(git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip())


def build_at(
    revision: Revision,
    board_name: str,
    model: str,
    show: Progress,
    repo: Path = ROOT,
    cache_dir: Path = CACHE_DIR,
    records_dir: Path = RECORDS_DIR,
) -> BuildArtifact:
    """The model built by `revision`'s own `invoke build --board B --model M` in a worktree of it, read back
    by this revision. `board` and `model` are names or paths (paths are made absolute first)."""
    board_arg, model_arg = _absolute(board_name), _absolute(model)
    builds = cache_dir / "revisions" / "builds" / revision.sha
    with worktree(revision, repo, cache_dir) as tree:
        python = revision_python(tree, revision, show, cache_dir)
        show(f"Building {model} for {board_name} at {revision.line()[:80]}...")
        env = {**os.environ, "PIPELINE_CACHE": str(builds), "PIPELINE_RECORDS": str(records_dir.resolve())}
        command = [str(python), "-m", "invoke", "build", "--board", board_arg, "--model", model_arg]
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        if errors:
            raise PipelineError(f"the build at {revision.short} failed: {errors[-1].removeprefix('error: ')}")
        log = write_log(f"build-{revision.short}", done.stdout + done.stderr)
        raise PipelineError(f"the build at {revision.short} failed (exit {done.returncode})", "see the log", log)
    libraries = [
        line.removeprefix("library ").strip() for line in done.stdout.splitlines() if line.startswith("library ")
    ]
    if not libraries:
        log = write_log(f"build-{revision.short}", done.stdout + done.stderr)
        raise PipelineError(f"the build at {revision.short} printed no library path", "see the log", log)
    folder = Path(libraries[-1]).parent
    try:
        return builder.load_build(folder, records_dir)
    except KeyError as missing:  # a build.json older than this revision's reader knows
        raise PipelineError(
            f"the build made at {revision.short} lacks {missing} in {builder.BUILD_INFO_NAME}",
            "compare with a later revision",
        ) from None


@contextmanager
def worktree(revision: Revision, repo: Path = ROOT, cache_dir: Path = CACHE_DIR) -> Iterator[Path]:
    """A detached worktree of the revision for the block, removed afterwards (also after a failure)."""
    path = cache_dir / "revisions" / revision.sha
    _remove_worktree(repo, path)  # a killed run's leftover
    path.parent.mkdir(parents=True, exist_ok=True)
    added = git(repo, "worktree", "add", "--detach", "--force", str(path), revision.sha)
    if added.returncode != 0:
        _remove_worktree(repo, path)
        detail = (added.stderr.strip().splitlines() or ["git failed"])[-1]
        raise PipelineError(f"cannot check out {revision.short} in a worktree: {detail}", "see git worktree list")
    try:
        yield path
    finally:
        _remove_worktree(repo, path)


def _remove_worktree(repo: Path, path: Path) -> None:
    if path.exists():
        git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(path, ignore_errors=True)
    git(repo, "worktree", "prune")


def revision_python(tree: Path, revision: Revision, show: Progress, cache_dir: Path = CACHE_DIR) -> Path:
    """This process's Python when the revision pins what this checkout pins, else an environment of the
    revision's pins (shared by the revisions with the same requirements.txt), created first when missing."""
    wanted = tree / "requirements.txt"
    if not wanted.is_file() or wanted.read_bytes() == (ROOT / "requirements.txt").read_bytes():
        return Path(sys.executable)
    pins = hashlib.sha256(wanted.read_bytes()).hexdigest()[:16]
    venv = cache_dir / "revisions" / "envs" / pins / "venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    show(
        f"{revision.short} pins other packages than this checkout: creating its own environment in {venv} "
        "(slow: a few minutes, once)"
    )
    venv.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".venv-", dir=venv.parent))
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        for step, command in (
            ("creating the virtual environment", [base, "-m", "venv", str(staging / "venv")]),
            (
                "installing its pins",
                [str(staging / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(wanted)],
            ),
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                log = write_log(f"env-{revision.short}", f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
                last = ([line for line in done.stderr.splitlines() if line.strip()] or [str(done.returncode)])[-1]
                raise PipelineError(
                    f"cannot install the pins of {revision.short} ({step}): {last}",
                    "check pip's configuration and the network",
                    log,
                )
        (staging / "venv").rename(venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not python.exists():
            shutil.rmtree(venv.parent, ignore_errors=True)
    return python


def _absolute(name_or_path: str) -> str:
    """A profile or model path as the worktree must see it; a name stays a name."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.suffix in (".yaml", ".yml", ".onnx") or path.exists() else name_or_path

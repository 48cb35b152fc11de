"""What produced a nightly result besides the board and the build: the pipeline's own code and the
tuning record store it deployed with. (A tuning record's own provenance, who tuned it where, is
pipeline.records.store.Provenance.)"""

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.paths import ROOT


@dataclass(frozen=True)
class RunProvenance:
    """This pipeline's commit and the record store's version for one nightly run; None when unknown."""

    pipeline_commit: str | None
    record_store_version: str | None


def pipeline_commit(root: Path = ROOT) -> str | None:
    """HEAD of the pipeline's checkout, with '-dirty' when it has uncommitted changes; None outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")

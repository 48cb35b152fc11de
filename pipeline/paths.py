"""Where the pipeline keeps its inputs and generated files, relative to the checkout."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARDS_DIR = ROOT / "boards"
MODELS_DIR = ROOT / "models"
RECORDS_DIR = Path(os.environ.get("PIPELINE_RECORDS", ROOT / "records"))
RESULTS_DIR = Path(os.environ.get("PIPELINE_RESULTS", ROOT / "results"))
CACHE_DIR = Path(os.environ.get("PIPELINE_CACHE", ROOT / ".cache"))

"""The deterministic input fed to the board and to the host reference."""

from pathlib import Path

import numpy as np

from pipeline.atomic import write_atomically
from pipeline.paths import CACHE_DIR


def make_input(shape: tuple[int, ...], seed: int = 0, cache_dir: Path = CACHE_DIR) -> tuple[np.ndarray, Path]:
    """Uniform(-1, 1) like the user's original benchmark; written once as raw float32 for the runner."""
    data = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    path = cache_dir / "inputs" / f"input-{'x'.join(map(str, shape))}-seed{seed}.bin"
    if not path.is_file():
        write_atomically(path, data.tobytes())
    return data, path

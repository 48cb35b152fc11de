"""Flag values as invoke hands them over (strings, None when absent), checked before anything runs: a bad
one is a PipelineError that names the flag and a value that works."""

import math
from pathlib import Path
from typing import overload

from pipeline.errors import PipelineError


@overload
def count(value: str | None, flag: str, default: int, least: int) -> int: ...
@overload
def count(value: str | None, flag: str, default: None, least: int) -> int | None: ...
def count(value: str | None, flag: str, default: int | None, least: int) -> int | None:
    """A whole number of at least `least` (runs, trials, rounds)."""
    if value is None:
        return default
    example = f"pass e.g. --{flag} {max(least, 10)}"
    try:
        number = int(value)
    except ValueError:
        raise PipelineError(f"--{flag} must be a whole number, got '{value}'", example) from None
    if number < least:
        raise PipelineError(f"--{flag} must be at least {least}, got '{value}'", example)
    return number


@overload
def positive(value: str | None, flag: str, default: float, example: str) -> float: ...
@overload
def positive(value: str | None, flag: str, default: None, example: str) -> float | None: ...
def positive(value: str | None, flag: str, default: float | None, example: str) -> float | None:
    """A finite number above zero (seconds, a tolerance); nan and inf are refused too."""
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise PipelineError(f"--{flag} must be a number, got '{value}'", f"pass e.g. --{flag} {example}") from None
    if not math.isfinite(number) or number <= 0:
        raise PipelineError(f"--{flag} must be a positive number, got '{value}'", f"pass e.g. --{flag} {example}")
    return number


def fraction(value: str | None) -> float | None:
    """--min-tuned-flops as a number; its range is checked with the rest of the coverage policy."""
    try:
        return None if value is None else float(value)
    except ValueError:
        raise PipelineError(f"--min-tuned-flops must be a fraction, got '{value}'", "pass e.g. 0.9") from None


def shape(value: str | None) -> tuple[int, ...] | None:
    """--input-shape 1,3,224,224; its rank and fixed sizes are checked against the model's input."""
    from pipeline.compiler.importer.model_file import parse_input_shape  # loads onnx: only when the flag is given

    return None if value is None else parse_input_shape(value)


def output_path(value: str | None, flag: str, folder: bool) -> Path | None:
    """A path the task writes to, its folder created now: a bad one fails before a long run, not after it."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not folder and path.is_dir():
        raise PipelineError(f"--{flag} {value} is a folder", f"pass a file path, e.g. --{flag} results/history.sqlite")
    try:
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(
            f"--{flag} {value}: cannot create its folder ({err.strerror})", "pass a path in a writable folder"
        ) from None
    return path

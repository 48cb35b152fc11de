"""Output check: the board's output against onnxruntime on the host for the same input."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reference: str
    max_abs_error: float
    relative_error: float
    tolerance: float
    same_top1: bool


def reference_output(model_path: Path, input_name: str, data: np.ndarray) -> np.ndarray:
    """Run the ONNX model with onnxruntime's CPU provider: an independent implementation to compare against."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {input_name: data})[0])


def compare(output: np.ndarray, reference: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> CheckResult:
    """Error relative to the reference's largest magnitude: robust for logits near zero."""
    if output.size != reference.size:
        return CheckResult(False, "onnxruntime", float("inf"), float("inf"), tolerance, False)
    output = output.reshape(reference.shape).astype(np.float64)
    reference = reference.astype(np.float64)
    max_abs = float(np.max(np.abs(output - reference)))
    scale = max(float(np.max(np.abs(reference))), float(np.finfo(np.float32).tiny))
    relative = max_abs / scale
    same_top1 = bool(np.argmax(output) == np.argmax(reference))
    return CheckResult(relative <= tolerance, "onnxruntime", max_abs, relative, tolerance, same_top1)

"""Deploy step: push to the board, run and time there, check against onnxruntime, and the result record."""

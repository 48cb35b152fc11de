"""Untuned vs. tuned TVM vs. ONNX Runtime for one model on this host, measured side by side.

Both TVM builds are the pipeline's own (`compile.build` for the `local` board), one with an empty
record store and one with `records/`; each library is loaded in this process with TVM's runtime and
timed with the same thread count as ONNX Runtime. Rounds alternate between the three so that machine
noise hits all of them alike; the figures are medians over rounds. Since builds give tasks without a
record transferred or default schedules, "untuned" measures those, not TVM's naive loops.

    .venv/bin/python benchmarks/tuned_vs_untuned.py [--model vgg16] [--threads 2] [--rounds 5]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tvm_runner(library: Path, params: Path, data: object) -> Callable[[], object]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    loaded = tvm.runtime.load_param_dict_from_file(str(params))
    arguments = [tvm.runtime.tensor(data)] + [loaded[name] for name in sorted(loaded)]
    return lambda: vm["main"](*arguments)


def ort_runner(model: Path, input_name: str, data: object, threads: int) -> Callable[[], object]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {input_name: data})


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--untuned-runs", type=int, default=1, help="untuned runs per round (they are slow)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    from pipeline import compile
    from pipeline.boards import load_board
    from pipeline.inputs import make_input
    from pipeline.models import resolve_model

    board, spec = load_board("local"), resolve_model(args.model)
    tuned = compile.build(spec, board)
    with tempfile.TemporaryDirectory() as empty:
        untuned = compile.build(spec, board, records_dir=Path(empty))
    data, _ = make_input(spec.input_shape)
    flops = sum(task.flops for task in tuned.coverage.tasks)
    print(f"{spec.name}: {flops / 1e9:.1f} GFLOP per inference; {args.threads} threads; "
          f"conv/dense FLOPs tuned: untuned build {untuned.coverage.tuned_share:.0%}, "
          f"tuned build {tuned.coverage.tuned_share:.0%}")

    runners = {
        "TVM untuned": tvm_runner(untuned.library, untuned.params, data),
        "TVM tuned": tvm_runner(tuned.library, tuned.params, data),
        "ONNX Runtime": ort_runner(spec.path, spec.input_name, data, args.threads),
    }
    for run in runners.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            repeats = args.untuned_runs if name == "TVM untuned" else 3
            samples[name].extend(seconds(run) for _ in range(repeats))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians["ONNX Runtime"]
    print(f"{'':14} {'median ms':>10} {'min ms':>9} {'GFLOP/s':>8} {'vs ORT':>7} {'vs untuned':>10}  runs")
    for name, values in samples.items():
        median = medians[name]
        print(f"{name:14} {median * 1e3:10.1f} {min(values) * 1e3:9.1f} {flops / median / 1e9:8.1f} "
              f"{median / reference:6.2f}x {medians['TVM untuned'] / median:9.1f}x  {len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-model latency of one model on this host, every schedule source side by side with ONNX Runtime
and OpenVINO.

    .venv/bin/python benchmarks/model_latency.py [--model vgg16] [--threads 2] [--rounds 15] [--naive]
    (OpenVINO is a benchmark-only dependency: .venv/bin/pip install -r benchmarks/requirements.txt)

Variants, all built by the pipeline's own steps for the `local` board and run by TVM's runtime, timed
with the same thread count as ONNX Runtime:
  naive     (--naive) TVM's lowering with no schedule at all: what a record miss cost before defaults
  default   an empty record store: every conv/dense task gets the rule-based default schedule (direct convs:
            the board profile's `winograd` set to false)
  winograd  an empty record store with the Winograd rewrite (pipeline/compiler/rewrites/winograd.py): eligible 3x3 convs
            as F(4x4, 3x3) stages with their own schedules, the rest as in default
  transfer  a store with the other models' records only: tasks take a transferred schedule where
            one beats the default
  tuned     records/ as shipped (skipped when it holds no record of this model)
  onnxruntime          its default threading (intra-op threads spin between ops and a while after a run)
  onnxruntime no-spin  intra-op spinning off (`session.intra_op.allow_spinning` = 0)
  openvino f32         f32 forced (its default on AVX-512 machines silently runs bf16), when it is installed
Each variant runs in a process of its own, with its runtime's own threading as deployed (TVM's thread
pool as on the board). A round gives each variant one turn, like TFLite's benchmark_model: --warmup
untimed runs, then --runs timed ones, whose median is the round's sample; after a turn the next
waits --pause seconds. So one runtime's spinning threads neither share a process with another runtime
nor run into its timed runs (TVM's workers spin for up to about 0.3 s after a run: with a pause of
0.05 s ONNX Runtime's ResNet-18 took 16-27 ms, with 1 s 8.3-8.7 ms). In one
process they did: ORT's ResNet-18 ran 16.5 ms (median) after a TVM variant against 8.8 ms alone, and
with TVM's spinning off TVM paid instead (its workers slept between its ~60 kernels: 7.4-7.8 against
6.4-6.7 ms alone). Every round runs each variant once, in a new random order (seeded), so machine noise
and whatever ran just before hit all of them alike; the table gives medians and minima over rounds,
ratios of medians against the tuned build (or the default one when there is none) and against the
faster ONNX Runtime variant.
"""

import argparse
import importlib.util
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round random order")
    parser.add_argument("--naive", action="store_true", help="also time TVM's naive loops (VGG-16: ~20 s a run)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between two variants' turns")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs at the start of each turn")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per turn; their median is the round's sample")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # the variants' processes inherit it

    from pipeline.board.profile import load_board
    from pipeline.compiler import builder
    from pipeline.compiler.importer.model_file import resolve_model
    from pipeline.deploy.inputs import make_input
    from pipeline.paths import RECORDS_DIR
    from pipeline.records.store import load_store

    winograd_board, spec = load_board("local"), resolve_model(args.model)
    board = winograd_board.model_copy(update={"winograd": False})
    data, _ = make_input(spec.input_shape)
    stored = load_store(RECORDS_DIR).records
    own = [s.path for s in stored if s.record.provenance.model == spec.name]
    others = [s.path for s in stored if s.record.provenance.model != spec.name]
    runners: dict[str, Runner] = {}
    shares: dict[str, str] = {}
    weights: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as scratch:
        stores = {"default": [], "winograd": [], "transfer": others, **({"tuned": own} if own else {})}
        for name, paths in stores.items():
            profile = winograd_board if name == "winograd" else board
            artifact = builder.build(spec, profile, records_dir=_store_of(Path(scratch) / name, paths))
            weights[name] = artifact.params.stat().st_size
            if name == "winograd":
                report = artifact.winograd
            runners[name] = (tvm_runner, (artifact.library, artifact.params, data))
            if name == "default":  # GFLOP/s of every variant counts the direct model's work
                flops = sum(task.flops for task in artifact.coverage.tasks)
            kinds = [task.schedule for task in artifact.coverage.tasks if task.heavy]
            shares[name] = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(sorted(kinds)))
    if args.naive:
        runners = {"naive": (naive_runner, (spec, board, data)), **runners}
    for name, spinning in (("onnxruntime", True), ("onnxruntime no-spin", False)):
        runners[name] = (ort_runner, (spec.path, spec.input_name, data, args.threads, spinning))
    if importlib.util.find_spec("openvino") is not None:
        runners["openvino f32"] = (openvino_runner, (spec.path, data, args.threads))

    print(f"{spec.name}: {flops / 1e9:.1f} GFLOP per inference, {args.threads} threads, {args.rounds} rounds")
    for name, share in shares.items():
        print(f"  {name:9} conv/dense tasks: {share}; weights {weights[name] / 1e6:.1f} MB")
    print(
        f"  multiply-adds: {report.multiply_adds_before / 1e9:.2f} G direct, {report.multiply_adds_after / 1e9:.2f} G "
        f"with Winograd ({len(report.layers)} of {report.convs} convs rewritten)"
    )
    print("\n".join(f"  {line}" for line in report.lines()))
    context = multiprocessing.get_context("spawn")
    variants = {name: Variant(context, *runner) for name, runner in runners.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    best = {name: float("inf") for name in variants}
    order, shuffle = list(variants), random.Random(args.seed).shuffle
    for _ in range(args.rounds):
        shuffle(order)
        for name in order:
            times = variants[name].time(args.warmup, args.runs)
            samples[name].append(statistics.median(times))
            best[name] = min(best[name], *times)
            time.sleep(args.pause)
    for variant in variants.values():
        variant.close()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = "tuned" if "tuned" in medians else "default"
    ort = min(("onnxruntime", "onnxruntime no-spin"), key=lambda name: medians[name])
    ort_best = min(best["onnxruntime"], best["onnxruntime no-spin"])
    print(f"ONNX Runtime: the faster variant, by median ({ort}) and by best ({ort_best * 1e3:.1f} ms)")
    print(
        f"{'':20} {'median ms':>10} {'min ms':>9} {'GFLOP/s':>8} {'vs ' + reference:>10} "
        f"{'vs ORT':>7} {'best vs ORT best':>17}"
    )
    for name in samples:
        median = medians[name]
        print(
            f"{name:20} {median * 1e3:10.1f} {best[name] * 1e3:9.1f} {flops / median / 1e9:8.1f} "
            f"{median / medians[reference]:9.2f}x {median / medians[ort]:6.2f}x "
            f"{best[name] / ort_best:16.2f}x"
        )
    return 0


Runner = tuple[Callable[..., Callable[[], object]], tuple[Any, ...]]  # a runner factory and its arguments


class Variant:
    """One variant in a process of its own, timing one run whenever asked."""

    def __init__(self, context: Any, factory: Callable[..., Callable[[], object]], arguments: tuple[Any, ...]) -> None:
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, factory, arguments), daemon=True)
        self._process.start()
        self._connection.recv()  # loaded, and run once: first calls load and compile lazily

    def time(self, warmup: int, runs: int) -> list[float]:
        """One turn: `warmup` untimed runs, then the seconds of each of `runs` runs."""
        self._connection.send((warmup, runs))
        return list(self._connection.recv())

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def _serve(connection: Any, factory: Callable[..., Callable[[], object]], arguments: tuple[Any, ...]) -> None:
    run = factory(*arguments)
    run()
    connection.send(True)
    while (turn := connection.recv()) is not None:
        warmup, runs = turn
        for _ in range(warmup):
            run()
        connection.send([seconds(run) for _ in range(runs)])


def _store_of(folder: Path, paths: list[Path]) -> Path:
    """A record store holding copies of the given record files, in their target folders."""
    for path in paths:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tvm_runner(library: Path, params: Path, data: object) -> Callable[[], object]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    loaded = tvm.runtime.load_param_dict_from_file(str(params))
    arguments = [tvm.runtime.tensor(data)] + [loaded[name] for name in sorted(loaded)]
    return lambda: vm["main"](*arguments)


def naive_runner(spec: object, board: object, data: object) -> Callable[[], object]:
    """The model lowered by TVM alone: no database applied, so conv/dense run as naive loops."""
    import tvm
    from tvm import relax

    from pipeline.compiler import lowering, passes
    from pipeline.compiler.builder import resolved_target

    target = tvm.target.Target(resolved_target(board).as_tvm_dict())
    mod, params = lowering.import_model(spec)
    vm = relax.VirtualMachine(passes.build_executable(passes.fuse(mod, target), target), tvm.cpu())
    arguments = [tvm.runtime.tensor(data), *params["main"]]
    return lambda: vm["main"](*arguments)


def ort_runner(model: Path, input_name: str, data: object, threads: int, spinning: bool) -> Callable[[], object]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {input_name: data})


def openvino_runner(model: Path, data: object, threads: int) -> Callable[[], object]:
    """OpenVINO's CPU plugin with f32 inference forced and the same thread count."""
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = openvino.Core().compile_model(str(model), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer([data])


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())

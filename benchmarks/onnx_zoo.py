"""The onnx wheel's nine real architectures deployed on `local`: build time, latency, error against onnxruntime.

    .venv/bin/python benchmarks/onnx_zoo.py [--runs 10] [--warmup 2] [--models squeezenet,resnet50]

Each model is deployed twice through the pipeline's own deploy (build, push, run on the loopback board,
check against onnxruntime): as the wheel ships it (IR version 3, every weight equal) and with random
convolution and dense weights (models/light_zoo.py, seed 0), whose error is the one that says something
about numerics. Build times are those of the build in the cache (a cached build keeps the time it took).
Set PIPELINE_SSHD_PORT when other checkouts use the default port.
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default="", help="comma-separated subset of the nine (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import onnx

    from models.light_zoo import LIGHT_MODELS, light_model_path, with_random_weights
    from pipeline.deploy.flow import deploy_once

    names = [name for name in args.models.split(",") if name] or list(LIGHT_MODELS)
    unknown = sorted(set(names) - set(LIGHT_MODELS))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(LIGHT_MODELS)}")
    header = (
        f"{'model':14} {'build s':>8} {'build s':>8} {'median ms':>10} {'median ms':>10} "
        f"{'rel. error':>10} {'rel. error':>10}  top-1"
    )
    print(header)
    print(f"{'':14} {'shipped':>8} {'random':>8} {'shipped':>10} {'random':>10} {'shipped':>10} {'random':>10}  random")
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            shipped = light_model_path(name)
            random_path = Path(scratch) / f"{name}_random.onnx"
            onnx.save(with_random_weights(onnx.load(shipped), args.seed), random_path)
            outcomes = [
                deploy_once("local", str(path), runs=args.runs, warmup=args.warmup, results_dir=Path(scratch))
                for path in (shipped, random_path)
            ]
            build = [o.result.build.compile_seconds for o in outcomes]
            median = [o.result.timings.stats.median_ms for o in outcomes]
            error = [o.result.check.relative_error for o in outcomes]
            top1 = "same" if outcomes[1].result.check.same_top1 else "DIFFERS"
            print(
                f"{name:14} {build[0]:8.1f} {build[1]:8.1f} {median[0]:10.2f} {median[1]:10.2f} "
                f"{error[0]:10.1e} {error[1]:10.1e}  {top1}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

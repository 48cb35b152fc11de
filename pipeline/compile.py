"""Build step: ONNX model + board target -> shared library and parameter file, cached by content."""

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .boards import Arch, BoardProfile
from .elf import elf_arch
from .errors import PipelineError
from .models import ModelSpec
from .paths import CACHE_DIR

LIBRARY_NAME = "model.so"
PARAMS_NAME = "params.bin"
BUILD_INFO_NAME = "build.json"


@dataclass(frozen=True)
class BuildArtifact:
    """What the push step needs, and what the result records about the build."""

    key: str
    directory: Path
    library: Path
    params: Path
    model: str
    input_name: str
    input_shape: tuple[int, ...]
    arch: Arch
    target: dict[str, Any]
    tvm_version: str
    cached: bool
    compile_seconds: float


def resolved_target(board: BoardProfile) -> dict[str, Any]:
    """The profile's target with `mcpu: host` replaced by this machine's CPU name, so the cache key
    and the result say exactly what the code was built for."""
    target = board.target.as_tvm_dict()
    if target["mcpu"] == "host":
        from tvm.target import codegen

        target["mcpu"] = str(codegen.llvm_get_system_cpu())
    return target


def build_key(model: ModelSpec, board: BoardProfile) -> str:
    """Content hash of everything that changes the built library: the model bytes, the target,
    the cross compiler, the TVM version and this build recipe itself."""
    import tvm

    digest = hashlib.sha256()
    with model.path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    recipe = {
        "target": resolved_target(board),
        "cross_compiler": board.cross_compiler,
        "tvm": tvm.__version__,
        "input": [model.input_name, list(model.input_shape)],
        "recipe": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def build(model: ModelSpec, board: BoardProfile, cache_dir: Path = CACHE_DIR) -> BuildArtifact:
    """Return the cached build for this exact input, or compile it and store it atomically."""
    key = build_key(model, board)
    directory = cache_dir / "builds" / f"{model.name}-{board.arch}-{key}"
    info_path = directory / BUILD_INFO_NAME
    if info_path.is_file():
        return _artifact_from_info(directory, json.loads(info_path.read_text()), cached=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)
    try:
        info = _compile_into(staging, model, board, key)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _artifact_from_info(directory, info, cached=False)


def _compile_into(out_dir: Path, model: ModelSpec, board: BoardProfile, key: str) -> dict[str, Any]:
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    started = time.perf_counter()
    target = resolved_target(board)
    try:
        mod = from_onnx(
            onnx.load(model.path), shape_dict={model.input_name: list(model.input_shape)}, keep_params_in_input=True
        )
        mod, params = relax.frontend.detach_params(mod)
        mod = relax.transform.DecomposeOpsForInference()(mod)
    except Exception as exc:  # TVM raises many types for unsupported graphs
        raise PipelineError(
            f"TVM cannot import {model.path.name}: {_first_line(exc)}", "check the ONNX model's operators and opset"
        ) from None
    try:
        executable = tvm.compile(mod, target=tvm.target.Target(target))
        library = out_dir / LIBRARY_NAME
        executable.export_library(str(library), fcompile=_compiler_for(board))
    except Exception as exc:
        raise PipelineError(
            f"TVM could not build {model.name} for {target['mtriple']}: {_first_line(exc)}",
            f"check that '{board.cross_compiler}' is installed (scripts/install.sh) and the profile's target",
        ) from None
    tvm.runtime.save_param_dict_to_file(
        {f"p{i:05d}": tensor for i, tensor in enumerate(params.get("main", []))}, str(out_dir / PARAMS_NAME)
    )
    built_arch = elf_arch(library)
    if built_arch != board.arch:
        raise PipelineError(
            f"the library was built for {built_arch}, but board {board.name} is {board.arch}",
            f"set cross_compiler in boards/{board.name}.yaml to a compiler for {board.target.mtriple}",
        )
    info = {
        "key": key,
        "model": model.name,
        "input_name": model.input_name,
        "input_shape": list(model.input_shape),
        "arch": built_arch,
        "target": target,
        "tvm_version": tvm.__version__,
        "compile_seconds": round(time.perf_counter() - started, 3),
    }
    (out_dir / BUILD_INFO_NAME).write_text(json.dumps(info, indent=2))
    return info


def _compiler_for(board: BoardProfile) -> Any:
    """A fresh cross-compile function each time: TVM's helper mutates its option list between calls."""
    from tvm.support import cc

    return cc.cross_compiler(board.cross_compiler)


def _artifact_from_info(directory: Path, info: dict[str, Any], cached: bool) -> BuildArtifact:
    return BuildArtifact(
        key=info["key"],
        directory=directory,
        library=directory / LIBRARY_NAME,
        params=directory / PARAMS_NAME,
        model=info["model"],
        input_name=info["input_name"],
        input_shape=tuple(info["input_shape"]),
        arch=info["arch"],
        target=info["target"],
        tvm_version=info["tvm_version"],
        cached=cached,
        compile_seconds=info["compile_seconds"],
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]


def artifact_summary(artifact: BuildArtifact) -> dict[str, Any]:
    """The build as plain JSON data for the result file."""
    data = asdict(artifact)
    for name in ("directory", "library", "params"):
        data[name] = str(data[name])
    return data

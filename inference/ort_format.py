"""The ORT-format companion of an ONNX model: what keeps an availability swap within memory.

Loading a ``.onnx`` file, onnxruntime holds the parsed protobuf and its own copy of the weights
(and a prepacked one for MatMul/Gemm) at once: the load peaks near twice the model's footprint.
``bundle create --optimize`` also writes ``model.ort``, the same graph in onnxruntime's ORT
(flatbuffer) format, after the *basic* graph optimisations only (semantics-preserving ONNX ops,
nothing tied to the CPU that wrote it: the extended fusions and the NCHWc layout are left to the
device), recorded in the manifest's ``ort`` section with its own sha256 and size and the
onnxruntime that wrote it. The agent loads it memory-mapped, the initializers pointing into the
mapping (``session.use_memory_mapped_ort_model`` + ``session.use_ort_model_bytes_for_initializers``)
and without prepacking (a packed copy would sit beside the mapped weights): no parse, no copy, the
load's peak is the footprint. The ``.onnx`` stays the model of record (its sha256 keys the
TensorRT cache; quantisation parameters are read from it) and the fallback: a companion that this
onnxruntime cannot read, or that fails to load, is one warning line and the ``.onnx`` is loaded.

Measured on benchmarks/hot_swap.py's model (docs/performance.md): the trade is speed for a model
with large MatMul weights run one row at a time (no prepacked weights), and on x86 the NCHWc
layout that an ``.onnx`` gets at load (ORT-format models are not re-optimised at load).

Not used from Python: ``session.use_ort_model_bytes_directly`` with a ``bytes`` object (the
binding copies the bytes into a temporary; with ``..._for_initializers`` the session then points
into freed memory and crashes), nor an ``mmap`` object (``InferenceSession`` refuses it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.errors import BundleError
from inference.fsio import sha256_file

if TYPE_CHECKING:
    from inference.bundle import Bundle
    from inference.runtime import RuntimeOptions

log = logging.getLogger(__name__)

FILE = "model.ort"
OPTIMIZATIONS = ("basic", "extended")  # what may be baked in; "all" adds hardware-specific layouts
# ORT format v5 is read by onnxruntime 1.14 and later; an ORT model loaded memory-mapped needs
# ``session.use_memory_mapped_ort_model``, measured here with 1.32 (older runtimes load the .onnx)
MIN_WRITER = (1, 14)
MIN_READER = (1, 32)
LOAD_CONFIG: dict[str, str] = {
    "session.load_model_format": "ORT",
    "session.use_memory_mapped_ort_model": "1",
    "session.use_ort_model_bytes_directly": "1",
    "session.use_ort_model_bytes_for_initializers": "1",
    "session.disable_prepacking": "1",
}
_VERSION_RE = re.compile(r"^onnxruntime (\d+)\.(\d+)\.(\d+)\S*$")


def runtime_string(version: str) -> str:
    """How a manifest names the onnxruntime that wrote a companion: ``"onnxruntime 1.32.0"``."""
    return f"onnxruntime {version}"


def parse_runtime(text: str) -> tuple[int, int, int] | None:
    """``"onnxruntime 1.32.0"`` -> (1, 32, 0); None for anything else."""
    m = _VERSION_RE.match(text) if isinstance(text, str) else None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def write_ort(onnx_path: Path, out_path: Path, *, optimization: str = "basic") -> dict[str, Any]:
    """Write the ORT-format companion of ``onnx_path`` at ``out_path``; return the manifest's ``ort``
    section (file, sha256, size, runtime, optimization). ``BundleError`` when onnxruntime cannot."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATIONS:
        raise BundleError(
            f"ORT-format optimization {optimization!r}: use one of {', '.join(OPTIMIZATIONS)} (the "
            "'all' level bakes in layouts for the CPU that writes it, which another device cannot use)"
        )
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[optimization]
    so.log_severity_level = 3
    tmp = Path(tempfile.mkdtemp(prefix=".ort-", dir=out_path.parent))
    try:
        so.optimized_model_filepath = str(tmp / out_path.name)
        so.add_session_config_entry("session.save_model_format", "ORT")
        try:
            ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises pybind11 classes with no common base
            raise BundleError(
                f"{onnx_path}: onnxruntime cannot write its ORT-format companion "
                f"({type(exc).__name__}: {str(exc).strip()[:300]}); build the bundle without --optimize"
            ) from exc
        written = tmp / out_path.name
        if not written.is_file() or written.stat().st_size == 0:
            raise BundleError(f"{onnx_path}: onnxruntime wrote no ORT-format model; build without --optimize")
        os.replace(written, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "size": out_path.stat().st_size,
        "runtime": runtime_string(ort.__version__),
        "optimization": optimization,
    }


def unreadable(section: Mapping[str, Any], version: str) -> str | None:
    """Why onnxruntime ``version`` will not load this companion (None: it will)."""
    here = parse_runtime(runtime_string(version))
    wrote = parse_runtime(str(section.get("runtime", "")))
    if here is None or here[:2] < MIN_READER:
        return (
            f"onnxruntime {version} cannot load an ORT-format model memory-mapped "
            f"(needs {MIN_READER[0]}.{MIN_READER[1]} or later)"
        )
    if wrote is None or wrote[:2] < MIN_WRITER:
        return f"it was written by {section.get('runtime')!r}, an ORT format this onnxruntime does not read"
    if wrote[:2] > here[:2]:
        return f"it was written by the newer {section.get('runtime')}; this is onnxruntime {version}"
    return None


def runtime_options(bundle: Bundle, options: RuntimeOptions | None) -> RuntimeOptions:
    """``options`` with ``ort_model`` set to ``bundle``'s companion when this onnxruntime can load it;
    otherwise ``options`` as they are (one log line says why the companion is not used).

    The bundle must have been verified (``open_bundle``): the companion's sha256 is checked there."""
    from inference.runtime import RuntimeOptions

    options = options or RuntimeOptions()
    section = bundle.manifest.ort
    if section is None or bundle.manifest.format != "onnx" or bundle.bare:
        return options
    import onnxruntime as ort

    why = unreadable(section, ort.__version__)
    if why is not None:
        log.warning("%s: not using the ORT-format companion %s: %s; loading %s",
                    bundle.root, section["file"], why, bundle.manifest.file)  # fmt: skip
        return options
    return replace(options, ort_model=bundle.root / str(section["file"]))


def session_source(onnx_path: Path, ort_model: Path | None) -> tuple[Path, dict[str, str]]:
    """The file to build the session from and the session config entries it needs."""
    if ort_model is None:
        return Path(onnx_path), {}
    return Path(ort_model), dict(LOAD_CONFIG)

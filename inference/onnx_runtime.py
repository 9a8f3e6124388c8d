"""``OnnxRuntime``: the ``Runtime`` protocol on ONNX Runtime.

CPU by default. Execution providers come from ``RuntimeOptions.providers`` (with their options,
see inference/providers.py); one that this onnxruntime build does not offer is skipped with a
log line, and when the session cannot be created, the first provider is dropped with one log
line and the rest tried, down to CPU. ``provider`` says which one runs. onnxruntime's exceptions
(``InvalidProtobuf``, ``NoSuchFile``, ``Fail``, ``InvalidGraph``, ...) share no base class
besides ``Exception``; they are translated into ``BundleError`` naming the file.

onnxruntime does not report the scale and zero point of a quantised (uint8/int8) input or
output; they are read from the model file by inference/onnx_quant.py, which needs no ``onnx``
package (a device does not install it) and raises ``BundleError`` rather than let a decoder
take raw integers for floats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import BundleError, ConfigError
from inference.onnx_quant import read_onnx_quant
from inference.ort_format import session_source
from inference.providers import (
    CPU,
    TENSORRT,
    XNNPACK,
    OptionValue,
    build_provider_list,
    canonical_name,
    default_cache_dir,
    tensorrt_version,
    trt_cache_folders,
)
from inference.runtime import Array, RuntimeOptions, TensorInfo

log = logging.getLogger(__name__)

# onnxruntime exception classes that say the model file is bad, whatever the provider
_MODEL_ERRORS = frozenset({"InvalidProtobuf", "NoSuchFile", "InvalidGraph", "NoModel"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# onnxruntime's type strings -> numpy dtypes
_ONNX_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

_OPT_LEVELS = ("disable", "basic", "extended", "all")


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """ONNX dims are ints, symbolic names or None; names, None and non-positive ints are dynamic."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


def _dtype(type_str: str, path: Path, name: str) -> np.dtype[np.generic]:
    try:
        return np.dtype(_ONNX_TYPES[type_str])
    except KeyError:
        raise BundleError(
            f"{path}: tensor {name!r} has type {type_str}, which edge-agent does not feed or decode; "
            f"use a model with {', '.join(sorted(_ONNX_TYPES))} inputs and outputs"
        ) from None


def _onnx_quant(
    path: Path, inputs: Sequence[str], outputs: Sequence[str]
) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]]]:
    """Quantisation params of graph inputs fed straight into DequantizeLinear and of outputs made by
    QuantizeLinear, read from the model file without the ``onnx`` package (a device does not install
    it): see inference/onnx_quant.py. Raises ``BundleError`` when a quantised input or output has no
    readable per-tensor parameters, and when the graph read from the file does not have the inputs
    and outputs onnxruntime reports (a reader that saw another graph must not answer for this one)."""
    found = read_onnx_quant(path)
    unseen = [n for n in inputs if n not in found.graph_inputs] + [
        n for n in outputs if n not in found.graph_outputs
    ]
    if unseen:
        raise BundleError(
            f"{path}: onnxruntime reports inputs/outputs {unseen} that the graph read from the file for "
            f"its quantisation parameters does not have (it has inputs {list(found.graph_inputs)}, "
            f"outputs {list(found.graph_outputs)}); the file changed on disk while loading or is not a "
            "plain ONNX model: fetch the model again"
        )
    return found.inputs, found.outputs


class OnnxRuntime:
    """One ONNX model in an ``onnxruntime.InferenceSession``.

    ``session_factory`` builds the session (``onnxruntime.InferenceSession`` by default); it is
    called as ``factory(path, sess_options=..., providers=[(name, options), ...])``."""

    kind = "onnx"

    def __init__(
        self, path: Path, options: RuntimeOptions | None = None, session_factory: Any = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = options or RuntimeOptions()
        self.version: str = f"onnxruntime {ort.__version__}"
        self.options = options
        level = options.graph_optimization
        if level not in _OPT_LEVELS:
            raise ConfigError(f"graph_optimization {level!r} is not one of {', '.join(_OPT_LEVELS)}")
        if not self.path.is_file():
            raise BundleError(f"model file {self.path} does not exist: check the path")
        factory = session_factory if session_factory is not None else ort.InferenceSession
        plan = self._plan(ort, options)
        self.source: Path = self.path  # the file the session was built from (.onnx or its .ort companion)
        self._session = self._open_companion(ort, factory, options, plan)
        if self._session is None:
            self._session = self._open_with_fallback(ort, factory, options, plan)
        self.providers: list[str] = list(self._session.get_providers())
        self.provider: str = self.providers[0] if self.providers else CPU
        dropped = [n for n, _ in plan if n not in self.providers]
        if dropped:  # onnxruntime may drop a provider it cannot start (no GPU) without raising
            log.warning(
                "%s: onnxruntime dropped execution provider(s) %s at session creation; runs on %s",
                self.path.name,
                ", ".join(dropped),
                ", ".join(self.providers),
            )

        qin: dict[str, tuple[float, int]] = {}
        qout: dict[str, tuple[float, int]] = {}
        ins = self._session.get_inputs()
        outs = self._session.get_outputs()
        if any(i.type in ("tensor(uint8)", "tensor(int8)") for i in [*ins, *outs]):
            qin, qout = _onnx_quant(self.path, [i.name for i in ins], [o.name for o in outs])
        self.inputs: list[TensorInfo] = [
            TensorInfo(i.name, _dims(i.shape), _dtype(i.type, self.path, i.name), qin.get(i.name))
            for i in ins
        ]
        self.outputs: list[TensorInfo] = [
            TensorInfo(o.name, _dims(o.shape), _dtype(o.type, self.path, o.name), qout.get(o.name))
            for o in outs
        ]
        self._input_names = [t.name for t in self.inputs]
        self._single = self._input_names[0] if len(self._input_names) == 1 else None

    def _plan(self, ort: Any, options: RuntimeOptions) -> list[tuple[str, dict[str, OptionValue]]]:
        """The provider list to try, with the options the agent fills in (see inference/providers.py)."""
        specs = options.specs
        available = list(ort.get_available_providers())
        trt = any(canonical_name(s.name) == TENSORRT for s in specs) and TENSORRT in available
        cache_dir = options.cache_dir if options.cache_dir is not None else default_cache_dir()
        plan = build_provider_list(
            specs,
            available,
            self.path,
            cache_dir,
            ort.__version__,
            trt_version=tensorrt_version() if trt else None,
            threads=options.threads,
        )
        for folder in trt_cache_folders(plan):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot create the TensorRT engine cache folder {folder}: {err.strerror}; "
                    "check the state folder's permissions or set trt_engine_cache_path"
                ) from None
        return plan

    def _session_options(self, ort: Any, options: RuntimeOptions, names: Sequence[str]) -> Any:
        so = ort.SessionOptions()
        threads = options.threads
        extra = dict(options.extra)
        if XNNPACK in names:
            # XNNPACK has its own thread pool (it got ``threads`` in build_provider_list): ORT's
            # intra-op pool then runs only what XNNPACK does not take, and must not spin against it.
            extra.setdefault("session.intra_op.allow_spinning", "0")
            if threads is not None:
                threads = 1
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        if options.inter_op_threads is not None:
            so.inter_op_num_threads = int(options.inter_op_threads)
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.graph_optimization]
        so.log_severity_level = 3  # errors only: warnings go through our own log lines
        for key, value in extra.items():
            if key.startswith("session."):  # onnxruntime session config entries
                so.add_session_config_entry(key, str(value))
        return so

    def _open_companion(
        self,
        ort: Any,
        factory: Any,
        options: RuntimeOptions,
        plan: list[tuple[str, dict[str, OptionValue]]],
    ) -> Any:
        """The session from the ORT-format companion (``options.ort_model``), or None (no companion,
        or it failed: one warning line, and the ``.onnx`` is loaded with the provider fallback)."""
        if options.ort_model is None:
            return None
        source, config = session_source(self.path, options.ort_model)
        names = [n for n, _ in plan]
        so = self._session_options(ort, replace(options, extra={**config, **options.extra}), names)
        try:
            session = factory(str(source), sess_options=so, providers=[(n, dict(o)) for n, o in plan])
        except Exception as exc:  # onnxruntime raises pybind11 classes with no common base
            log.warning("%s: the ORT-format companion %s did not load (%s: %s); loading %s",
                        self.path.parent, source.name, type(exc).__name__, _first_line(exc),
                        self.path.name)  # fmt: skip
            return None
        self.source = source
        return session

    def _open_with_fallback(
        self,
        ort: Any,
        factory: Any,
        options: RuntimeOptions,
        plan: list[tuple[str, dict[str, OptionValue]]],
    ) -> Any:
        """A session with ``plan``; when it cannot be created, the first provider is dropped with one
        log line and the rest tried, down to CPU. A model onnxruntime cannot read is not the
        provider's fault: ``BundleError`` at once."""
        while True:
            names = [n for n, _ in plan]
            try:
                return factory(
                    str(self.path),
                    sess_options=self._session_options(ort, options, names),
                    providers=[(n, dict(o)) for n, o in plan],
                )
            except Exception as exc:  # onnxruntime raises pybind11 classes with no common base
                kind = type(exc).__name__
                if len(plan) == 1 or kind in _MODEL_ERRORS or not self.path.is_file():
                    raise self._load_error(exc) from exc
                first = plan.pop(0)[0]
                log.warning(
                    "%s: execution provider %s failed (%s: %s); trying %s",
                    self.path.name,
                    first,
                    kind,
                    _first_line(exc),
                    ", ".join(n for n, _ in plan),
                )

    def _load_error(self, exc: Exception) -> BundleError:
        kind = type(exc).__name__
        if kind == "NoSuchFile" or not self.path.is_file():
            return BundleError(f"model file {self.path} does not exist: check the path")
        detail = str(exc).split(" failed:", 1)[-1].strip() or str(exc)
        return BundleError(
            f"{self.path}: onnxruntime cannot load this model ({kind}: {detail}); the file is "
            "corrupt, truncated or not an ONNX model: rebuild it or fetch it again"
        )

    def run(self, feeds: Sequence[Array]) -> list[Array]:
        """Run one inference: one array per input in ``inputs`` order; returns the outputs in order."""
        try:
            if self._single is not None:
                out: list[Array] = self._session.run(None, {self._single: feeds[0]})
            else:
                out = self._session.run(None, dict(zip(self._input_names, feeds, strict=False)))
        except Exception as exc:
            raise BundleError(
                f"{self.path}: inference failed ({type(exc).__name__}: {exc}); "
                f"feeds {[(f.shape, str(f.dtype)) for f in feeds]}, model inputs "
                f"{[(t.shape, str(t.dtype)) for t in self.inputs]}"
            ) from exc
        return out

    def close(self) -> None:
        self._session = None

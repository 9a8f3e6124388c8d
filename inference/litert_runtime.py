"""``LiteRtRuntime``: the ``Runtime`` protocol on LiteRT (TensorFlow Lite).

Uses ``ai_edge_litert.interpreter.Interpreter``, else ``tflite_runtime.interpreter.Interpreter``
(older devices). XNNPACK is LiteRT's default CPU delegate; ``RuntimeOptions.xnnpack=False``
asks for the builtin kernels without default delegates, and an ``xnnpack`` entry in
``RuntimeOptions.providers`` turns it on (its ``num_threads`` option wins over ``threads``).
``provider`` is ``"xnnpack"`` or ``"builtin"``. Quantised tensors report
``(scale, zero_point)`` in ``TensorInfo.quant``; dynamic dimensions (``-1`` in the shape
signature) are ``None``. A feed whose shape differs from the current input shape resizes
the input (and reallocates) before running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import BundleError, ConfigError
from inference.providers import litert_options
from inference.runtime import Array, RuntimeOptions, TensorInfo

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'edge-agent[tflite]'"


def _interpreter_module() -> tuple[Any, str]:
    """The interpreter module and the engine's version string."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"
    except ImportError:
        raise ConfigError(
            f"running .tflite models needs LiteRT, which is not installed: run {INSTALL_HINT} "
            "(or install tflite-runtime on devices without an ai-edge-litert wheel)"
        ) from None


def _info(d: dict[str, Any]) -> TensorInfo:
    sig = d.get("shape_signature")
    dims = sig if sig is not None and len(sig) else d["shape"]
    shape = tuple(int(x) if int(x) > 0 else None for x in dims)
    dtype = np.dtype(d["dtype"])
    quant = None
    scale, zp = d.get("quantization", (0.0, 0))
    if scale and dtype.kind in "iu":
        quant = (float(scale), int(zp))
    return TensorInfo(str(d["name"]), shape, dtype, quant)


class LiteRtRuntime:
    """One .tflite model in a LiteRT interpreter."""

    kind = "tflite"

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        self.path = Path(path)
        options = options or RuntimeOptions()
        self.options = options
        mod, self.version = _interpreter_module()
        xnnpack, threads = litert_options(options.specs, options.xnnpack, options.threads)
        kwargs: dict[str, Any] = {"model_path": str(self.path)}
        if threads is not None:
            kwargs["num_threads"] = int(threads)
        self.provider: str = "xnnpack"
        if not xnnpack:
            resolver = getattr(mod, "OpResolverType", None)
            if resolver is not None and hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                self.provider = "builtin"
            else:
                log.warning(
                    "%s: this LiteRT cannot turn XNNPACK off; running with its defaults", self.version
                )
        if not self.path.is_file():
            raise BundleError(f"model file {self.path} does not exist: check the path")
        try:
            self._interp = mod.Interpreter(**kwargs)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as exc:
            raise BundleError(
                f"{self.path}: LiteRT cannot load this model ({exc}); the file is corrupt, truncated "
                "or not a .tflite model: rebuild it or fetch it again"
            ) from exc
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        self.inputs: list[TensorInfo] = [_info(d) for d in in_details]
        self.outputs: list[TensorInfo] = [_info(d) for d in out_details]
        self._in_idx = [int(d["index"]) for d in in_details]
        self._out_idx = [int(d["index"]) for d in out_details]
        self._cur_shapes = [tuple(int(x) for x in d["shape"]) for d in in_details]

    def _resize(self, i: int, shape: tuple[int, ...]) -> None:
        try:
            self._interp.resize_tensor_input(self._in_idx[i], list(shape), strict=False)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"{self.path}: cannot resize input {self.inputs[i].name!r} to {list(shape)} ({exc}); "
                f"the model's input shape is {list(self.inputs[i].shape)}"
            ) from exc
        self._cur_shapes[i] = shape

    def run(self, feeds: Sequence[Array]) -> list[Array]:
        """Run one inference: one array per input in ``inputs`` order; returns copies of the outputs."""
        interp = self._interp
        try:
            for i, feed in enumerate(feeds):
                if feed.shape != self._cur_shapes[i]:
                    self._resize(i, feed.shape)
                interp.set_tensor(self._in_idx[i], feed)
            interp.invoke()
            return [interp.get_tensor(j) for j in self._out_idx]  # get_tensor returns a copy
        except BundleError:
            raise
        except (ValueError, RuntimeError, IndexError) as exc:
            raise BundleError(
                f"{self.path}: inference failed ({exc}); feeds {[(f.shape, str(f.dtype)) for f in feeds]}, "
                f"model inputs {[(t.shape, str(t.dtype)) for t in self.inputs]}"
            ) from exc

    def close(self) -> None:
        self._interp = None

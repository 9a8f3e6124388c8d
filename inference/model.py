"""``LoadedModel``: Runtime + Preprocessor + Decoder for one bundle: ``infer(frame) -> Result``.

``load_model`` opens a bundle folder or a bare model file, loads the runtime, resolves the
input spec against the model's real input (a manifest shape that contradicts the model is a
``BundleError``), builds the decoder and checks it against the model's outputs, so a model
that cannot serve fails here, at load, never on the first frame.

``infer`` = preprocess -> run -> dequantise integer outputs to float32 with the runtime's
quantisation parameters -> decode; ``Result.latency_ms`` covers the three steps. A
``LoadedModel`` may be called from several threads; calls run one at a time (the
preprocessing buffers and a LiteRT interpreter serve one call at a time).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.bundle import Bundle, open_bundle
from inference.decoders import Decoder, make_decoder
from inference.errors import BundleError
from inference.exporter_config import ExporterConfig, read_exporter_config
from inference.geometry import Transform
from inference.ort_format import runtime_options
from inference.preprocess import DEFAULT_HW, InputSpec, Preprocessor, resolve_input_spec
from inference.result import Result
from inference.runtime import Runtime, RuntimeOptions, TensorInfo, load_runtime

Array = npt.NDArray[Any]
log = logging.getLogger(__name__)


def _dequantiser(info: TensorInfo) -> tuple[float, float] | bool | None:
    """``(scale, zero_point)`` for a quantised output, ``True`` for a plain cast, ``None`` for float32."""
    if info.dtype == np.float32:
        return None
    if info.quant is not None and info.dtype.kind in "iu":
        return float(info.quant[0]), float(info.quant[1])
    return True


def dequantise(outputs: list[Array], plan: list[tuple[float, float] | bool | None]) -> list[Array]:
    """Outputs as float32: ``(q - zero_point) * scale`` for quantised ones, a cast for other dtypes."""
    res: list[Array] = []
    for out, how in zip(outputs, plan, strict=False):
        if how is None and out.dtype == np.float32:
            res.append(out)
        elif isinstance(how, tuple):
            scale, zp = how
            f = out.astype(np.float32)
            if zp:
                f -= np.float32(zp)
            f *= np.float32(scale)
            res.append(f)
        else:
            res.append(out.astype(np.float32))
    return res


class LoadedModel:
    """One bundle, ready to serve frames."""

    def __init__(
        self, bundle: Bundle, runtime: Runtime, spec: InputSpec, preprocessor: Preprocessor, decoder: Decoder
    ) -> None:
        self.bundle = bundle
        self.name: str = bundle.manifest.name
        self.version: int = bundle.manifest.version
        self.sha256: str = bundle.manifest.sha256
        self.runtime = runtime
        self.spec = spec
        self.preprocessor = preprocessor
        self.decoder = decoder
        self._plan = [_dequantiser(o) for o in runtime.outputs]
        self._buf = preprocessor.new_output()
        self._lock = threading.Lock()
        self._closed = False

    def infer(self, image: npt.NDArray[np.uint8]) -> Result:
        """Run one BGR uint8 HxWx3 frame through the model; ``latency_ms`` is set on the result."""
        with self._lock:
            t0 = time.perf_counter()
            x, t = self.preprocessor(image, out=self._buf)
            result = self.decode(self.runtime.run([x]), t)
            result.latency_ms = result.inference_ms = (time.perf_counter() - t0) * 1000.0
        return result

    def run_prepared(self, x: Array) -> list[Array]:
        """``runtime.run`` on an input made beforehand by a ``Preprocessor`` of this model's
        ``spec`` (the agent's pipeline preprocesses on its capture thread): the raw outputs."""
        with self._lock:
            return self.runtime.run([x])

    def decode(self, outputs: list[Array], t: Transform) -> Result:
        """Dequantise and decode raw outputs (sets ``finite``, not ``latency_ms``). Uses no
        runtime, so it may run on another thread while the next frame runs."""
        outs = dequantise(outputs, self._plan)
        result = self.decoder(outs, t)
        # one reduction per output: NaN or Inf anywhere makes the sum non-finite
        result.finite = all(math.isfinite(float(o.sum(dtype=np.float64))) for o in outs)
        return result

    def run_outputs(self, image: npt.NDArray[np.uint8]) -> list[Array]:
        """The raw (not dequantised) model outputs for one frame, without decoding."""
        with self._lock:
            x, _ = self.preprocessor(image, out=self._buf)
            return self.runtime.run([x])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.runtime.close()

    def __repr__(self) -> str:
        return f"LoadedModel({self.name} v{self.version}, {self.runtime.kind}, {self.bundle.model_path})"


def load_model(
    path: Path | Bundle,
    options: RuntimeOptions | None = None,
    runtime: str | None = None,
    *,
    input_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load a bundle folder, a bare ``.onnx`` / ``.tflite`` file or an opened ``Bundle``.

    ``runtime`` forces "onnx" or "tflite" (default: by the manifest's format / file suffix).
    A bare file is configured from its exporter's metadata where it has any
    (inference/exporter_config.py; logged). ``input_size`` (``--input-size HxW``) sets the
    input's height and width over the manifest's, the metadata's and the default 640.
    The model then runs once on a blank input of the chosen shape (the warm-up), so a shape it
    cannot run at fails here, naming the fix, not on every frame.
    Raises ``BundleError`` (or ``VerificationError``) naming the file and what to do.
    """
    bundle = path if isinstance(path, Bundle) else open_bundle(Path(path), verify=True)
    where = str(bundle.manifest_path or bundle.model_path)
    options = runtime_options(bundle, options)  # the ORT-format companion, when the bundle has one
    rt = load_runtime(bundle.model_path, options, runtime or bundle.manifest.format)
    try:
        if len(rt.inputs) != 1:
            raise BundleError(
                f"{bundle.model_path}: the model has {len(rt.inputs)} inputs "
                f"({', '.join(i.name for i in rt.inputs)}); edge-agent feeds one image input: "
                "export the model with a single image input"
            )
        inferred = None
        if bundle.bare:
            inferred = read_exporter_config(
                bundle.model_path, bundle.manifest.format, rt.inputs, rt.outputs, input_size
            )
            if inferred is not None:
                log.info("%s: %s", bundle.model_path, inferred.describe())
                fields, _ = inferred.merge()
                bundle = replace(bundle, manifest=replace(bundle.manifest, **fields))
        m = bundle.manifest
        chosen = _shape_origin(m.input, rt.inputs[0], input_size, inferred)
        if input_size is not None and "shape" in m.input:
            _log_size_override(where, m.input, input_size, inferred)
        spec = resolve_input_spec(m.input or None, rt.inputs[0], where, size=input_size)
        pre = Preprocessor(spec, rt.inputs[0])
        decoder = make_decoder(m.decoder, m.decoder_params, bundle.labels())
        because = _because(inferred)
        try:
            decoder.check(list(rt.outputs))
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}{because}") from exc
        outputs = _warm_up(rt, pre, where, chosen)
        if any(o.is_dynamic for o in rt.outputs):  # the decoder sees the real sizes now
            concrete = [
                replace(o, shape=tuple(int(d) for d in a.shape))
                for o, a in zip(rt.outputs, outputs, strict=True)
            ]
            try:
                decoder.check(concrete)
            except BundleError as exc:
                raise BundleError(f"{where}: at input shape {list(spec.shape)}: {exc}{because}") from exc
        return LoadedModel(bundle, rt, spec, pre, decoder)
    except BaseException:
        rt.close()
        raise


def _because(inferred: ExporterConfig | None) -> str:
    if inferred is None:
        return ""
    return (
        f" (the decoder, labels and input came from the model's {inferred.exporter} metadata, which "
        "contradicts the model: export it again, or make a bundle that says what is right with "
        "`edge-agent bundle create --decoder/--labels/--input-spec`)"
    )


def _shape_origin(
    manifest_input: dict[str, Any],
    tensor: TensorInfo,
    size: tuple[int, int] | None,
    inferred: ExporterConfig | None,
) -> str:
    """Where the input shape comes from, for the warm-up's error."""
    if size is not None:
        return f"--input-size {size[0]}x{size[1]}"
    if "shape" in manifest_input:
        return f"the {inferred.exporter} metadata" if inferred is not None else "the manifest's input.shape"
    if tensor.is_dynamic:
        return f"the default {DEFAULT_HW} for a dynamic height and width"
    return "the model's own input shape"


def _log_size_override(
    where: str, manifest_input: dict[str, Any], size: tuple[int, int], inferred: ExporterConfig | None
) -> None:
    shape = list(manifest_input["shape"])
    hw = (shape[-2], shape[-1]) if manifest_input.get("layout", "NCHW") == "NCHW" else (shape[-3], shape[-2])
    if tuple(hw) != size:
        origin = f"the {inferred.exporter} metadata's" if inferred is not None else "the manifest's"
        log.info("%s: --input-size %dx%d wins over %s %dx%d", where, size[0], size[1], origin, hw[0], hw[1])


def _warm_up(rt: Runtime, pre: Preprocessor, where: str, chosen: str) -> list[Array]:
    """One run on a blank input of the chosen shape; ``BundleError`` naming the input, its dynamic dims,
    the shape tried and the fix when the model cannot run at it."""
    x = np.zeros(pre.spec.shape, dtype=pre.dtype)
    try:
        return rt.run([x])
    except BundleError as exc:
        tensor = rt.inputs[0]
        cause = str(exc.__cause__ or exc)
        cause = cause if len(cause) <= 300 else cause[:297] + "..."
        shape = "[" + ", ".join("?" if d is None else str(d) for d in tensor.shape) + "]"
        if tensor.is_dynamic:
            raise BundleError(
                f"{where}: the model cannot run at input shape {list(pre.spec.shape)} ({chosen}): input "
                f"{tensor.name!r} is {shape}, its '?' dims are dynamic and the model needs other values "
                f'there ({cause}). Give the size it needs: --input-size HxW (input_size = "HxW" in the '
                "config), or the manifest's input.shape"
            ) from exc
        raise BundleError(
            f"{where}: the model fails on a blank input of its own shape {shape} ({cause}); "
            "the model is broken: export it again"
        ) from exc


def exporter_config_of(
    model_path: Path,
    options: RuntimeOptions | None = None,
    runtime: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> ExporterConfig | None:
    """What ``model_path``'s exporter metadata says (``None``: nothing this agent reads); the model
    is loaded to see its inputs and outputs, then closed."""
    rt = load_runtime(model_path, options, runtime)
    try:
        return read_exporter_config(model_path, rt.kind, rt.inputs, rt.outputs, input_size)
    finally:
        rt.close()


def bare_manifest(
    bundle: Bundle, options: RuntimeOptions | None = None, input_size: tuple[int, int] | None = None
) -> Bundle:
    """A bare model file as a bundle whose manifest states what its exporter metadata says (the
    store writes it when it imports a bare file; ``input_size`` wins over the size it says);
    unchanged when there is no such metadata."""
    if not bundle.bare:
        return bundle
    inferred = exporter_config_of(bundle.model_path, options, bundle.manifest.format, input_size)
    if inferred is None:
        return bundle
    log.info("%s: %s", bundle.model_path, inferred.describe())
    fields, _ = inferred.merge()
    return replace(bundle, manifest=replace(bundle.manifest, **fields))

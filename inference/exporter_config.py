"""A bare model file's configuration, read from the metadata its exporter wrote.

``read_exporter_config(path, format, inputs, outputs)`` returns an ``ExporterConfig`` (input
spec, task, decoder and its parameters, labels, and notes saying what came from where) or
``None`` when the file carries nothing this agent reads (then a bare model runs with the
``raw`` decoder, as before). Recognised:

- **Ultralytics** ONNX exports (YOLOv5 and later: ``names``, ``imgsz``, ``stride``, ``task``):
  ``detect`` -> ``yolo`` letterboxed at ``imgsz``; ``classify`` -> ``classification``; other
  tasks (segment, pose, obb) run ``raw``, said in the notes. Dynamic batch/image dims take
  ``imgsz``; a static dim that contradicts ``imgsz`` is an error naming the fix.
- **PaddleOCR** text recognisers (the CTC character table as metadata ``character``):
  ``ctc_text``, BGR, ``(x / 255 - 0.5) / 0.5``, at the family's 48 x 320 where the model
  leaves height/width dynamic.
- **TFLite metadata** (``NormalizationOptions``, input ``Stats``, labels files): the
  normalisation of a float input and the labels; one ``(1, C)`` output with C labels ->
  ``classification``.
- **TFLite_Detection_PostProcess** as the graph's last op -> ``detection_postprocess``, with
  which output is boxes, classes, scores and count taken from the graph.

Metadata is untrusted input: it is parsed with bounds (``ast.literal_eval`` of at most
``MAX_LITERAL`` characters, never ``eval``), and what it says is checked against the model
when it loads (labels against classes, character table against the output width, the shape by
a warm-up run) with errors that name the metadata key and the fix. ``ExporterConfig.merge``
lets a user's explicit values win, each contradiction reported.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import BundleError
from inference.runtime import TensorInfo

MAX_LITERAL = 256 * 1024
MAX_LABELS = 100_000
ULTRALYTICS_PAD = 114
PPOCR_REC_HW = (48, 320)  # PaddleOCR PP-OCRv3/v4 recognisers (RapidOCR's rec_img_shape)


@dataclass(frozen=True)
class ExporterConfig:
    """What a model's own metadata says: the manifest fields it fills and how they were found."""

    exporter: str  # "ultralytics" | "paddleocr" | "tflite-metadata" | "tflite-detection-postprocess"
    task: str
    decoder: str
    decoder_params: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One log line: what was inferred."""
        parts = [f"configured from its {self.exporter} metadata: task {self.task or '-'}, "
                 f"decoder {self.decoder}"]  # fmt: skip
        if self.labels:
            shown = ", ".join(self.labels[:5]) + (", ..." if len(self.labels) > 5 else "")
            parts.append(f"{len(self.labels)} labels ({shown})")
        if "shape" in self.input:
            parts.append(f"input {self.input['shape']} {self.input.get('resize', 'stretch')}")
        return "; ".join(parts + list(self.notes))

    def merge(
        self,
        *,
        decoder: str | None = None,
        decoder_params: Mapping[str, Any] | None = None,
        labels: Sequence[str] | None = None,
        input: Mapping[str, Any] | None = None,
        task: str | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Manifest fields with the given (user's) values winning over the inferred ones, and one
        message per inferred value they override."""
        overridden: list[str] = []
        out_decoder = self.decoder
        params = dict(self.decoder_params)
        if decoder is not None and decoder != self.decoder:
            overridden.append(f"decoder {decoder!r} instead of the metadata's {self.decoder!r}")
            out_decoder = decoder
            params = {}
        if decoder_params:
            for k, v in decoder_params.items():
                if k in params and params[k] != v:
                    overridden.append(f"decoder parameter {k}={v!r} instead of the metadata's")
            params.update(decoder_params)
        out_labels = list(self.labels)
        if labels:
            if self.labels and list(labels) != self.labels:
                overridden.append(f"{len(labels)} labels instead of the metadata's {len(self.labels)}")
            out_labels = list(labels)
        spec = dict(self.input)
        for k, v in (input or {}).items():
            if k in spec and spec[k] != v:
                overridden.append(f"input.{k} {v!r} instead of the metadata's {spec[k]!r}")
            spec[k] = v
        out_task = self.task
        if task and task != self.task:
            out_task = task
        fields = {"decoder": out_decoder, "decoder_params": params, "labels": out_labels, "input": spec,
                  "task": out_task}  # fmt: skip
        return fields, overridden


# -- helpers ------------------------------------------------------------------------------------


def _literal(value: str, key: str, where: str) -> Any:
    if len(value) > MAX_LITERAL:
        raise BundleError(
            f"{where}: metadata {key!r} is {len(value)} characters, over the {MAX_LITERAL} this agent "
            "reads: strip or shorten it, or make a bundle with `edge-agent bundle create`"
        )
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise BundleError(
            f"{where}: metadata {key!r} is not a Python literal ({type(exc).__name__}): {value[:80]!r}; "
            "export the model again, or make a bundle with `edge-agent bundle create --labels`"
        ) from None


def _names(value: str, where: str) -> list[str]:
    """Ultralytics ``names``: ``{0: 'person', 1: 'bicycle', ...}`` (or a list)."""
    obj = _literal(value, "names", where)
    if isinstance(obj, dict):
        keys = sorted(obj) if all(isinstance(k, int) and not isinstance(k, bool) for k in obj) else None
        if keys is None or keys != list(range(len(obj))):
            raise BundleError(
                f"{where}: metadata 'names' must map the class ids 0..N-1 to names; its keys are "
                f"{list(obj)[:10]}: export the model again, or make a bundle with "
                "`edge-agent bundle create --labels`"
            )
        items = [obj[k] for k in keys]
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        raise BundleError(f"{where}: metadata 'names' is a {type(obj).__name__}, not a dict of class names")
    if len(items) > MAX_LABELS:
        raise BundleError(
            f"{where}: metadata 'names' has {len(items)} classes, over {MAX_LABELS}: export it again"
        )
    if not all(isinstance(n, str) for n in items):
        raise BundleError(
            f"{where}: metadata 'names' must map class ids to strings; it holds "
            f"{sorted({type(n).__name__ for n in items})}: export the model again, or make a bundle with "
            "`edge-agent bundle create --labels`"
        )
    return [str(n) for n in items]


def _imgsz(value: str | None, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    obj = _literal(value, "imgsz", where)
    if isinstance(obj, int) and not isinstance(obj, bool):
        obj = [obj, obj]
    if (
        not isinstance(obj, (list, tuple))
        or len(obj) not in (1, 2)
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 16384 for v in obj)
    ):
        raise BundleError(
            f"{where}: metadata 'imgsz' is {value[:40]!r}; it must be an image size such as [640, 640]: "
            "export the model again, or give --input-size HxW"
        )
    h, w = (obj[0], obj[0]) if len(obj) == 1 else (obj[0], obj[1])
    return int(h), int(w)


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _nchw_shape(inp: TensorInfo, hw: tuple[int, int], key: str, where: str) -> list[int]:
    """The model's NCHW input shape with dynamic dims filled: batch 1, 3 channels, ``hw``; a static
    height/width that contradicts ``hw`` (from metadata ``key``) is an error."""
    if len(inp.shape) != 4:
        raise BundleError(
            f"{where}: input {inp.name!r} is {_fmt(inp.shape)}, not the rank-4 image input the "
            f"metadata ({key}) describes: export the model again"
        )
    n, c, h, w = inp.shape
    for dim, want, what in ((h, hw[0], "height"), (w, hw[1], "width")):
        if dim is not None and dim != want and key == "--input-size":
            raise BundleError(
                f"{where}: --input-size {hw[0]}x{hw[1]} asks for a {what} of {want}, but input {inp.name!r} "
                f"has a fixed {what} of {dim} ({_fmt(inp.shape)}): only dynamic ('?') dims can be chosen; "
                "drop --input-size (input_size) or give the model's own size"
            )
        if dim is not None and dim != want:
            raise BundleError(
                f"{where}: the metadata says the image size is {hw[0]}x{hw[1]} ({key}) but input "
                f"{inp.name!r} has a fixed {what} of {dim} ({_fmt(inp.shape)}): the metadata contradicts "
                f"the model; export it again, or give --input-size {h or hw[0]}x{w or hw[1]}"
            )
    return [
        1 if n is None else n,
        3 if c is None else c,
        hw[0] if h is None else h,
        hw[1] if w is None else w,
    ]


# -- exporters ----------------------------------------------------------------------------------


def is_ultralytics(meta: Mapping[str, str]) -> bool:
    return meta.get("author", "").startswith("Ultralytics") or ("names" in meta and "stride" in meta)


def _ultralytics(
    meta: Mapping[str, str], inp: TensorInfo, where: str, input_size: tuple[int, int] | None
) -> ExporterConfig:
    names = _names(meta["names"], where) if "names" in meta else []
    size = _imgsz(meta.get("imgsz"), where)
    notes: list[str] = []
    key = "'imgsz'"
    if input_size is not None:
        if size is not None and size != input_size:
            notes.append(f"--input-size {input_size[0]}x{input_size[1]} wins over imgsz {size[0]}x{size[1]}")
        size, key = input_size, "--input-size"
    elif size is None:
        dims = inp.shape[2:] if len(inp.shape) == 4 else ()
        size = (dims[0] or 640, dims[1] or 640) if len(dims) == 2 else (640, 640)
        notes.append("no 'imgsz' in the metadata: the input's own size (or 640)")
    task = meta.get("task", "detect")
    shape = _nchw_shape(inp, size, key, where)
    spec: dict[str, Any] = {"shape": shape, "layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": 0.0,
                            "std": 1.0, "resize": "letterbox", "pad": ULTRALYTICS_PAD}  # fmt: skip
    if task == "detect":
        return ExporterConfig("ultralytics", "object_detection", "yolo", {}, names, spec, tuple(notes))
    if task == "classify":
        spec["resize"] = "stretch"
        return ExporterConfig(
            "ultralytics", "classification", "classification", {}, names, spec, tuple(notes)
        )
    notes.append(f"task {task!r} is not decoded by this agent: its results are the raw outputs")
    return ExporterConfig("ultralytics", task, "raw", {}, names, spec, tuple(notes))


def _paddleocr(
    meta: Mapping[str, str],
    inp: TensorInfo,
    outputs: Sequence[TensorInfo],
    where: str,
    input_size: tuple[int, int] | None,
) -> ExporterConfig:
    # PaddleOCR's dict reader splits on "\n" only (splitlines would also split on \x0b, \x85, ...)
    chars = [c.rstrip("\r") for c in meta["character"].split("\n")]
    if chars and chars[-1] == "":
        chars.pop()
    if not chars:
        raise BundleError(
            f"{where}: metadata 'character' (the CTC character table) is empty: export it again"
        )
    if len(outputs) != 1 or len(outputs[0].shape) not in (2, 3):
        raise BundleError(
            f"{where}: the model has metadata 'character' (a PaddleOCR recogniser's character table) but "
            f"its outputs are {[_fmt(o.shape) for o in outputs]}, not one (1, T, C) sequence: export it again"
        )
    notes = [f"{len(chars)} characters from 'character'"]
    if input_size is not None:
        shape = _nchw_shape(inp, input_size, "--input-size", where)
        notes.append(f"--input-size {input_size[0]}x{input_size[1]} wins over the family's 48x320")
    else:
        shape = _nchw_shape(inp, PPOCR_REC_HW, "the PaddleOCR recogniser's 48x320", where)
    spec: dict[str, Any] = {"shape": shape, "layout": "NCHW", "color": "BGR", "scale": 1 / 255, "mean": 0.5,
                            "std": 0.5, "resize": "letterbox", "pad": 127.5}  # fmt: skip
    return ExporterConfig(
        "paddleocr", "text_recognition", "ctc_text", {"characters": chars}, [], spec, tuple(notes)
    )  # fmt: skip


def _tflite(path: Path, inp: TensorInfo, outputs: Sequence[TensorInfo], where: str) -> ExporterConfig | None:
    from inference.tflite_metadata import read_tflite_info

    info = read_tflite_info(path)
    if not info.has_metadata and info.postprocess is None:
        return None
    notes: list[str] = []
    spec: dict[str, Any] = {"layout": "NHWC", "color": "RGB"}
    float_input = np.dtype(inp.dtype).kind == "f"
    if info.inputs:
        m = info.inputs[0]
        # The normalisation gives the real value; a quantised input then takes it through its own
        # (scale, zero point), as the preprocessor does for any spec (q = x / s + zp).
        if m.mean and m.std and (float_input or inp.quant is not None):
            if any(s == 0 for s in m.std):
                raise BundleError(f"{where}: the TFLite metadata's normalisation has std 0: fix the metadata")
            spec.update(scale=1.0, mean=list(m.mean) if len(m.mean) > 1 else m.mean[0],
                        std=list(m.std) if len(m.std) > 1 else m.std[0])  # fmt: skip
            notes.append(f"input (pixel - {m.mean[0] if len(m.mean) == 1 else list(m.mean)}) / "
                         f"{m.std[0] if len(m.std) == 1 else list(m.std)} from the metadata")  # fmt: skip
        elif m.min and m.max and float_input and len(m.min) == 1 and len(m.max) == 1 and m.max[0] > m.min[0]:
            spec.update(scale=(m.max[0] - m.min[0]) / 255.0, mean=-m.min[0], std=1.0)
            notes.append(f"input range [{m.min[0]}, {m.max[0]}] from the metadata")
    if info.postprocess is not None:
        labels = info.labels.get(info.postprocess["classes"]) or next(iter(info.labels.values()), [])
        notes.append(f"outputs {info.postprocess} from the graph's TFLite_Detection_PostProcess")
        spec.setdefault("resize", "stretch")
        params: dict[str, Any] = {"outputs": dict(info.postprocess)}
        n = info.num_classes
        if labels and n is not None and len(labels) != n:
            if len(labels) == n + 1 and labels[0].lower() in ("???", "background"):
                params["label_offset"] = 1  # a TF1 label map: its first line is the background
                notes.append(f"label_offset 1 (the labels file starts with {labels[0]!r})")
            else:
                raise BundleError(
                    f"{where}: the TFLite metadata's labels file has {len(labels)} labels but the model's "
                    f"TFLite_Detection_PostProcess has num_classes {n}: the labels do not belong to this "
                    "model; write the metadata again with its own labels file, or make a bundle with "
                    "`edge-agent bundle create --labels`"
                )
        return ExporterConfig("tflite-detection-postprocess", "object_detection", "detection_postprocess",
                              params, labels, spec, tuple(notes))  # fmt: skip
    labels = info.labels.get(0, [])
    out = outputs[0].shape if len(outputs) == 1 else ()
    if labels and len(out) in (1, 2) and out[-1] is not None and out[-1] != len(labels):
        if out[-1] == len(labels) + 1:
            notes.append("one class more than labels (a background class): its label is its index")
        else:
            raise BundleError(
                f"{where}: the TFLite metadata's labels file has {len(labels)} labels but output "
                f"{outputs[0].name!r} has {out[-1]} classes: the labels do not belong to this model; "
                "write the metadata again with its own labels file, or make a bundle with "
                "`edge-agent bundle create --labels`"
            )
    if labels and len(out) in (1, 2) and out[-1] == len(labels):
        # A quantised classifier's output is its softmax (TFLite's 1/256 scale): dequantised, its sum is
        # only near 1, so "auto" would apply a second softmax and flatten it.
        params = {"softmax": "false"} if outputs[0].quant is not None else {}
        return ExporterConfig(
            "tflite-metadata", "classification", "classification", params, labels, spec, tuple(notes)
        )
    return ExporterConfig("tflite-metadata", "", "raw", {}, labels, spec, tuple(notes))


def _is_sequence_head(outputs: Sequence[TensorInfo]) -> bool:
    """One (1, T, C) or (T, C) output: a recogniser's. PaddleDetection models (PicoDet layout) keep
    their class names under ``character`` too, with several outputs: those are not recognisers."""
    return len(outputs) == 1 and len(outputs[0].shape) in (2, 3)


def read_exporter_config(
    path: Path,
    fmt: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    input_size: tuple[int, int] | None = None,
) -> ExporterConfig | None:
    """The configuration ``path``'s exporter metadata gives, or ``None`` when it has none this agent
    reads; ``input_size`` (``--input-size``) wins over the size it says. ``BundleError`` (naming
    ``path``, the metadata key and the fix) when it contradicts itself or the model's input."""
    where = str(path)
    if len(inputs) != 1:
        return None
    if fmt == "tflite":
        return _tflite(Path(path), inputs[0], outputs, where)
    from inference.onnx_metadata import read_onnx_metadata

    meta = read_onnx_metadata(Path(path))
    if "character" in meta and _is_sequence_head(outputs):
        return _paddleocr(meta, inputs[0], outputs, where, input_size)
    if is_ultralytics(meta):
        return _ultralytics(meta, inputs[0], where, input_size)
    return None

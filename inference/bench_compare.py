"""``edge-agent bench --compare A B``: do two models agree, and how fast is each?

A and B are one model in two formats (``.onnx`` and ``.tflite``, float and quantised) or two
bundles. Both see the same inputs:

- ``--input DIR``: the same images, each through its model's own ``Preprocessor``;
- ``--input random|golden``: A's input tensors (random of A's dtype, or A's golden inputs,
  else B's), given to B as they are, transposed between NCHW and NHWC, and quantised or
  dequantised with B's input parameters where the two differ in layout or dtype.

Agreement, per output pair (matched by position): the largest absolute difference after
dequantising integer outputs to float (outputs transposed between NCHW and NHWC when that
is what differs), with the largest |A| for scale. After decoding: top-1 agreement for
classifiers; for detectors, boxes matched greedily by IoU ≥ 0.5 (same label), the share of
boxes matched and their mean IoU. Speed: ``bench_isolated`` for each side and thread count.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.bench import (
    BenchResult,
    Target,
    bench_isolated,
    input_label,
    parse_shapes,
    prepare_inputs,
    resolve_target,
    runtime_kinds,
)
from inference.errors import ConfigError
from inference.geometry import Transform
from inference.result import Box, Result
from inference.runtime import TensorInfo

Array = npt.NDArray[Any]
RANDOM_INPUTS = 4  # random tensors compared (seeds 0..3)
MAX_IMAGES = 32
IOU_MATCH = 0.5


def _load(target: Target, threads: int) -> Any:
    from inference.model import load_model
    from inference.runtime import RuntimeOptions

    return load_model(target.bundle_root or target.model_path, RuntimeOptions(threads=threads))


def _dequantise(a: Array, info: TensorInfo) -> npt.NDArray[np.float32]:
    if info.quant is not None and np.dtype(a.dtype).kind in "iu":
        scale, zp = info.quant
        out: npt.NDArray[np.float32] = (a.astype(np.float32) - np.float32(zp)) * np.float32(scale)
        return out
    return np.asarray(a, dtype=np.float32)


def _quantise(x: npt.NDArray[np.float32], info: TensorInfo) -> Array:
    dt = np.dtype(info.dtype)
    scale, zp = info.quant or (1.0, 0)
    lo, hi = (0, 255) if dt == np.uint8 else (-128, 127)
    q: Array = np.clip(np.round(x / np.float32(scale) + np.float32(zp)), lo, hi).astype(dt)
    return q


def _layout_perm(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis order that turns shape ``src`` into ``dst`` (identity first; NCHW<->NHWC next)."""
    if src == dst:
        return tuple(range(len(src)))
    if len(src) != len(dst) or sorted(src) != sorted(dst):
        return None
    preferred = [(0, 2, 3, 1), (0, 3, 1, 2)] if len(src) == 4 else []
    for perm in [*preferred, *permutations(range(len(src)))]:
        if tuple(src[i] for i in perm) == dst:
            return tuple(perm)
    return None


def adapt_input(x: Array, src: TensorInfo, dst: TensorInfo, dst_shape: tuple[int, ...]) -> Array:
    """``x`` (fed to A's input ``src``) made fit for B's input ``dst`` of shape ``dst_shape``."""
    perm = _layout_perm(tuple(x.shape), dst_shape)
    if perm is None:
        raise ConfigError(
            f"A's input {src.name!r} has shape {list(x.shape)} and B's input {dst.name!r} {list(dst_shape)}, "
            "which no transposition relates: compare on images instead (--input DIR), so each model "
            "preprocesses its own"
        )
    y = np.transpose(x, perm) if perm != tuple(range(x.ndim)) else x
    if np.dtype(y.dtype) == np.dtype(dst.dtype):
        return np.ascontiguousarray(y)
    f = _dequantise(y, src)
    if np.dtype(dst.dtype).kind in "iu" and np.dtype(dst.dtype).itemsize == 1:
        return np.ascontiguousarray(_quantise(f, dst))
    return np.ascontiguousarray(f.astype(dst.dtype))


def _dst_shape(info: TensorInfo, x: Array) -> tuple[int, ...]:
    """B's concrete input shape for A's tensor ``x``: B's static dims, the dynamic ones from ``x``."""
    if not info.is_dynamic:
        return tuple(int(d) for d in info.shape if d is not None)
    if len(info.shape) == x.ndim:
        for perm in (
            [tuple(range(x.ndim)), (0, 2, 3, 1), (0, 3, 1, 2)] if x.ndim == 4 else [tuple(range(x.ndim))]
        ):
            cand = tuple(int(x.shape[i]) for i in perm)
            if all(d is None or d == c for d, c in zip(info.shape, cand, strict=True)):
                return cand
    raise ConfigError(
        f"B's input {info.name!r} {list(info.shape)} cannot take A's input shape {list(x.shape)}: "
        "compare on images instead (--input DIR)"
    )


def compare_output(a: Array, b: Array, ia: TensorInfo, ib: TensorInfo) -> dict[str, Any]:
    fa, fb = _dequantise(a, ia), _dequantise(b, ib)
    row: dict[str, Any] = {"a": ia.name, "b": ib.name, "shape_a": list(fa.shape), "shape_b": list(fb.shape)}
    perm = _layout_perm(tuple(fb.shape), tuple(fa.shape))
    note = ""
    if perm is None and fa.size == fb.size:
        # the same values laid out differently (e.g. [1, 896, 16] vs [896, 16]): squeeze both
        sa, sb = tuple(d for d in fa.shape if d != 1), tuple(d for d in fb.shape if d != 1)
        perm_sq = _layout_perm(sb, sa)
        if perm_sq is not None:
            fa, fb = fa.reshape(sa), np.transpose(fb.reshape(sb), perm_sq)
            perm, note = tuple(range(fa.ndim)), "size-1 dims dropped"
    if perm is None:
        row.update(
            max_abs_diff=None, max_abs_a=float(np.abs(fa).max()) if fa.size else 0.0, note="shapes differ"
        )
        return row
    if perm != tuple(range(fb.ndim)):
        fb = np.transpose(fb, perm)
        note = "B transposed"
    diff = np.abs(fa - fb)
    row.update(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        max_abs_a=float(np.abs(fa).max()) if fa.size else 0.0,
        note=note,
    )
    return row


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(ra: Result, rb: Result, threshold: float = IOU_MATCH) -> list[float]:
    """Greedy one-to-one matching of same-label boxes, best IoU first; the IoUs of matched pairs."""
    pairs = sorted(
        (
            (iou(da.box, db.box), i, j)
            for i, da in enumerate(ra.detections)
            for j, db in enumerate(rb.detections)
            if da.label == db.label
        ),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    out: list[float] = []
    for v, i, j in pairs:
        if v < threshold:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append(v)
    return out


def compare_decoded(results_a: Sequence[Result], results_b: Sequence[Result]) -> dict[str, Any]:
    kinds = {r.kind for r in [*results_a, *results_b]}
    if kinds == {"classes"}:
        same = sum(
            1
            for ra, rb in zip(results_a, results_b, strict=True)
            if ra.classes and rb.classes and ra.classes[0].label == rb.classes[0].label
        )
        return {"top1_agreement": round(same / max(len(results_a), 1), 4)}
    if kinds == {"detections"}:
        matched: list[float] = []
        n_a = n_b = 0
        for ra, rb in zip(results_a, results_b, strict=True):
            matched += match_boxes(ra, rb)
            n_a += len(ra.detections)
            n_b += len(rb.detections)
        total = max(n_a, n_b)
        return {
            "boxes_a": n_a,
            "boxes_b": n_b,
            "matched": len(matched),
            "matched_share": round(len(matched) / total, 4) if total else 1.0,
            "mean_iou": round(float(np.mean(matched)), 4) if matched else None,
        }
    if kinds == {"outputs"}:
        return {}
    return {"note": f"the decoders differ ({', '.join(sorted(kinds))}): no decoded comparison"}


def agreement(
    ta: Target, tb: Target, input_mode: str, shapes: dict[str, tuple[int, ...]], threads: int = 1
) -> dict[str, Any]:
    """Run A and B on the same inputs; compare raw outputs and decoded results."""
    from inference.bench import _read_images

    la, lb = _load(ta, threads), _load(tb, threads)
    try:
        ra_list: list[Result] = []
        rb_list: list[Result] = []
        rows: list[list[dict[str, Any]]] = []
        if input_mode in ("random", "golden"):
            feeds = _tensor_inputs(ta, tb, la, lb, input_mode, shapes)
            pairs = []
            for fa in feeds:
                x_b = adapt_input(
                    fa[0], la.runtime.inputs[0], lb.runtime.inputs[0], _dst_shape(lb.runtime.inputs[0], fa[0])
                )
                pairs.append((fa[0], x_b))
            for x_a, x_b in pairs:
                outs_a, outs_b = la.runtime.run([x_a]), lb.runtime.run([x_b])
                rows.append(_rows(outs_a, outs_b, la, lb))
                ra_list.append(_decode(la, outs_a))
                rb_list.append(_decode(lb, outs_b))
            n = len(pairs)
        else:
            images = _read_images(Path(input_mode), MAX_IMAGES)
            for image in images:
                x_a, t_a = la.preprocessor(image)
                x_b, t_b = lb.preprocessor(image)
                outs_a, outs_b = la.runtime.run([x_a]), lb.runtime.run([x_b])
                rows.append(_rows(outs_a, outs_b, la, lb))
                ra_list.append(_decode(la, outs_a, t_a))
                rb_list.append(_decode(lb, outs_b, t_b))
            n = len(images)
        return {
            "input": input_label(input_mode),
            "inputs": n,
            "outputs": _merge_rows(rows),
            "decoded": compare_decoded(ra_list, rb_list),
        }
    finally:
        la.close()
        lb.close()


def _tensor_inputs(
    ta: Target, tb: Target, la: Any, lb: Any, mode: str, shapes: dict[str, tuple[int, ...]]
) -> list[list[Array]]:
    if mode == "golden":
        if ta.bundle_root is not None and (ta.manifest.validation or {}).get("golden"):
            return prepare_inputs(ta, la.runtime, "golden")
        if tb.bundle_root is not None and (tb.manifest.validation or {}).get("golden"):
            # B's golden inputs, fed to A: swap roles for adapting
            feeds_b = prepare_inputs(tb, lb.runtime, "golden")
            ia, ib = la.runtime.inputs[0], lb.runtime.inputs[0]
            return [[adapt_input(f[0], ib, ia, _dst_shape(ia, f[0]))] for f in feeds_b]
        raise ConfigError("--input golden: neither A nor B is a bundle with golden pairs; use random or DIR")
    if not shapes and ta.bundle_root is None and la.runtime.inputs[0].is_dynamic:
        shapes = {"": tuple(la.spec.shape)}  # the shape the agent itself would feed
    return [prepare_inputs(ta, la.runtime, "random", shapes, seed=s)[0] for s in range(RANDOM_INPUTS)]


def _decode(model: Any, outs: list[Array], t: Transform | None = None) -> Result:
    if t is None:
        w, h = model.spec.width, model.spec.height
        t = Transform.stretch(w, h, w, h)
    deq = [_dequantise(o, i) for o, i in zip(outs, model.runtime.outputs, strict=True)]
    result: Result = model.decoder(deq, t)
    return result


def _rows(outs_a: list[Array], outs_b: list[Array], la: Any, lb: Any) -> list[dict[str, Any]]:
    return [
        compare_output(a, b, ia, ib)
        for a, b, ia, ib in zip(outs_a, outs_b, la.runtime.outputs, lb.runtime.outputs, strict=False)
    ]


def _merge_rows(rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per output: the worst difference over all inputs."""
    merged: list[dict[str, Any]] = []
    for per_output in zip(*rows, strict=True):
        row = dict(per_output[0])
        diffs = [r["max_abs_diff"] for r in per_output if r["max_abs_diff"] is not None]
        row["max_abs_diff"] = max(diffs) if diffs else None
        row["max_abs_a"] = max(r["max_abs_a"] for r in per_output)
        if "mean_abs_diff" in row:
            row["mean_abs_diff"] = float(np.mean([r.get("mean_abs_diff", 0.0) for r in per_output]))
        merged.append(row)
    return merged


def compare(
    a: str | Path,
    b: str | Path,
    threads: Sequence[int] = (1,),
    runs: int = 100,
    warmup: int = 10,
    duration: float | None = None,
    input_mode: str = "random",
    shapes: Sequence[str] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Agreement of A and B on the same inputs, and each one's speed figures."""
    ta, tb = resolve_target(a), resolve_target(b)
    parsed = parse_shapes(shapes)
    agree = agreement(ta, tb, input_mode, parsed, threads[0])
    doc: dict[str, Any] = {"agreement": agree}
    for side, target in (("a", ta), ("b", tb)):
        kind = runtime_kinds(target, "auto")[0]
        path = str(target.bundle_root or target.model_path)
        mode = input_mode if input_mode != "golden" or target.bundle_root is not None else "random"
        side_shapes = list(shapes) if side == "a" else []
        results: list[BenchResult] = [
            bench_isolated(path, kind, n, runs, warmup, duration, mode, side_shapes, progress=progress)
            for n in threads
        ]
        doc[side] = {"model": target.name, "path": path, "results": [r.to_json() for r in results]}
    return doc

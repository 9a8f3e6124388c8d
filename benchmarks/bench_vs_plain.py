"""``edge-agent bench`` against a plain engine loop (DESIGN §9: p50 within 5 %).

For each model: the bench's measuring process (``python -m inference.bench``, the same one
``edge-agent bench`` starts per configuration) and a plain loop written straight against
onnxruntime / LiteRT (``benchmarks.common.plain_onnx`` / ``plain_tflite``, in its own fresh
process too) time the same model file on the same input with the same thread count. Each
round runs the pair back to back, the order alternating between rounds
(``benchmarks.common.paired_rounds``); ``bench_vs_plain`` is the median of the per-round p50
ratios, with their range and IQR (``benchmarks.common.paired_ratio``).

Run alone: ``python -m benchmarks.bench_vs_plain [--quick]`` (writes
results/bench_vs_plain-<machine>-<date>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    paired_ratio,
    paired_rounds,
    plain_onnx,
    plain_tflite,
    result_stem,
    summarize,
    write_json,
)
from inference.bench import bench_isolated, concrete_shape, random_tensor
from inference.runtime import load_runtime

# (zoo name, shape override, runs, quick runs)
MODELS: tuple[tuple[str, str | None, int, int], ...] = (
    ("blazeface", None, 1000, 200),  # LiteRT, ~1 ms
    ("ppocr-cls", "1x3x48x192", 500, 100),  # ONNX Runtime, ~1 ms
    ("ppocr-det", "1x3x480x640", 60, 15),  # ONNX Runtime, inference-bound
)
THREADS = 1
ROUNDS, QUICK_ROUNDS = 7, 3
TARGET = 0.05


def _plain_worker(argv: list[str]) -> int:
    """``python -m benchmarks.bench_vs_plain --plain MODEL NPY THREADS RUNS WARMUP``: print samples."""
    model, npy, threads, runs, warmup = argv
    feed = np.load(npy)
    loop = plain_tflite if model.endswith(".tflite") else plain_onnx
    samples, wall = loop(Path(model), int(threads), feed, int(runs), int(warmup))
    print(json.dumps({"samples_ms": samples.tolist(), "wall_s": wall}))
    return 0


def _plain_isolated(model: Path, npy: Path, threads: int, runs: int, warmup: int) -> list[float]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(
        os.environ,
        PYTHONPATH=root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_vs_plain",
        "--plain",
        str(model),
        str(npy),
        str(threads),
        str(runs),
        str(warmup),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=1800)
    return list(json.loads(proc.stdout.strip().splitlines()[-1])["samples_ms"])


def _feed(model: Path, shape: str | None) -> np.ndarray[Any, Any]:
    """The input ``inference.bench`` builds for ``--input random`` (same shape rule, same seed)."""
    rt = load_runtime(model)
    try:
        info = rt.inputs[0]
        override = tuple(int(d) for d in shape.split("x")) if shape else None
        return random_tensor(info, concrete_shape(info, override), np.random.default_rng(0))
    finally:
        rt.close()


def measure(
    name: str, model: Path, shape: str | None, runs: int, rounds: int, threads: int = THREADS
) -> dict[str, Any]:
    """Paired bench / plain rounds on one model (the order alternating); the median of the
    per-round p50 ratios with their spread, and both distributions."""
    warmup = max(5, runs // 10)
    feed = _feed(model, shape)
    with tempfile.TemporaryDirectory(prefix="bench-vs-plain-") as tmp:
        npy = Path(tmp) / "feed.npy"
        np.save(npy, feed)
        pairs = paired_rounds(
            rounds,
            lambda: bench_isolated(
                str(model), "auto", threads, runs, warmup, shapes=[shape] if shape else [], samples=True
            ),
            lambda: _plain_isolated(model, npy, threads, runs, warmup),
        )
    bench_p50 = [b.latency_ms["p50"] for b, _ in pairs]
    plain_p50 = [summarize(p)["p50"] for _, p in pairs]
    ratio = paired_ratio(bench_p50, plain_p50)
    return {
        "model": name,
        "file": model.name,
        "runtime_version": pairs[0][0].runtime_version,
        "threads": threads,
        "input_shape": list(feed.shape),
        "runs": runs,
        "rounds": [
            {"first": "bench" if i % 2 == 0 else "plain", "bench_p50": b, "plain_p50": p, "ratio": r}
            for i, (b, p, r) in enumerate(zip(bench_p50, plain_p50, ratio.rounds, strict=True))
        ],
        "bench_vs_plain": ratio.median,
        "ratio": ratio,
        # for reference: the estimator used before (best p50 of each side, from different rounds)
        "best_p50_ratio": min(bench_p50) / min(plain_p50),
        "bench": summarize([x for b, _ in pairs for x in b.samples_ms]),
        "plain": summarize([x for _, p in pairs for x in p]),
        "_samples": {
            f"{name} bench": [x for b, _ in pairs for x in b.samples_ms],
            f"{name} plain": [x for _, p in pairs for x in p],
        },
    }


def run(quick: bool = False) -> dict[str, Any]:
    from inference import zoo

    out: dict[str, Any] = {"models": [], "targets": [], "latency_ms": {}, "notes": []}
    for name, shape, runs, quick_runs in MODELS:
        m = measure(
            name,
            zoo.model_file(name),
            shape,
            quick_runs if quick else runs,
            QUICK_ROUNDS if quick else ROUNDS,
        )
        out["latency_ms"].update(m.pop("_samples"))
        ratio = m.pop("ratio")
        m["ratio"] = ratio.to_dict()
        out["models"].append(m)
        out["targets"].append(
            {
                "what": f"edge-agent bench p50 ÷ plain loop p50, {name} ({m['file']}, {THREADS} thread): "
                f"median of {len(ratio.rounds)} paired rounds",
                "value": round(ratio.median, 4),
                "spread": m["ratio"]["range"],
                "target": "within 5 % (0.95–1.05)",
                "ok": abs(ratio.median - 1.0) <= TARGET,
            }
        )
        out["notes"].append(
            f"{name}: bench ÷ plain p50 {ratio.text()}; best bench p50 ÷ best plain p50 "
            f"{m['best_p50_ratio']:.3f} (the old estimator, for reference)"
        )
    out["bench_vs_plain"] = {m["model"]: round(m["bench_vs_plain"], 4) for m in out["models"]}
    out["notes"].append(
        "bench_vs_plain: the median of the per-round p50 ratios; each round runs both sides, each in "
        "a fresh process, back to back, the order alternating between rounds; range and IQR of the "
        "per-round ratios beside it"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--plain"]:
        return _plain_worker(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_vs_plain", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.quick)
    result.pop("latency_ms", None)
    path = write_json(RESULTS_DIR / f"bench_vs_plain-{result_stem()}.json", result)
    for note in result["notes"]:
        print(note, file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

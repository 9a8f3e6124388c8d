"""``edge-agent bench``: benchmark a model on this device's own hardware.

    edge-agent bench MODEL_OR_BUNDLE [--runtime auto|onnx|tflite] [--threads 1,2,4] [--runs N]
                     [--warmup N] [--duration S] [--input random|golden|DIR] [--shape [NAME:]DxD…]
                     [--providers tensorrt,cuda,cpu] [--json] [--out FILE]
    edge-agent bench --compare A B [same options]       output agreement beside the speed figures
    edge-agent bench MODEL --pipeline --source SPEC     end-to-end through the agent's pipeline

Each runtime × thread count is measured in its own fresh process (``python -m inference.bench``)
so the peak RSS and the RSS added by loading the model are the OS's figures for that
configuration alone; each result says which execution provider ran it (``provider``: the first
of the session's providers for ONNX Runtime, ``xnnpack`` or ``builtin`` for LiteRT). What is
timed is the runtime's ``run()`` on a prepared input, as in TFLite's ``benchmark_model`` and
``onnxruntime_perf_test``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from inference.bench import (
    BenchResult,
    bench_isolated,
    machine_info,
    parse_input_size,
    parse_shapes,
    parse_threads,
    resolve_target,
    runtime_kinds,
)
from inference.errors import ConfigError
from inference.fsio import atomic_write_json
from inference.providers import provider_specs

DEFAULT_RUNS = 100
DEFAULT_WARMUP = 10


def register(subparsers: Any) -> None:
    """Add ``edge-agent bench`` to the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark a model (load time, latency percentiles, fps, RSS) on this device",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="a bundle folder, a bare .onnx/.tflite file, or a zoo model name")
    p.add_argument("--runtime", default="auto", help="auto (by file type), onnx or tflite (default: auto)")
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2,4 (default: 1)")
    p.add_argument(
        "--providers",
        default=None,
        help="execution providers in order, e.g. tensorrt,cuda,cpu or xnnpack,cpu (default: cpu); "
        "each result says which one ran",
    )
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"timed runs (default: {DEFAULT_RUNS})")
    p.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"untimed runs first (default: {DEFAULT_WARMUP})"
    )
    p.add_argument("--duration", type=float, default=None, help="time runs for S seconds instead of --runs")
    p.add_argument(
        "--input", default="random", help="random, golden (a bundle's golden inputs) or a folder of images"
    )
    p.add_argument("--shape", action="append", default=[], metavar="[NAME:]DxD…",
                   help="the input shape for dynamic dims, e.g. 1x3x480x640 (repeatable)")  # fmt: skip
    p.add_argument("--input-size", metavar="HxW", default=None,
                   help="height x width for a model whose input size is dynamic, as for run")  # fmt: skip
    p.add_argument("--json", action="store_true", help='print {"results": [...], "machine": {...}}')
    p.add_argument("--out", type=Path, default=None, help="also write the JSON document to FILE")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="two models (one model in two formats, or two bundles): output agreement and speed",
    )
    p.add_argument("--pipeline", action="store_true", help="measure end-to-end through the agent's pipeline")
    p.add_argument(
        "--source",
        default=None,
        help="the source spec for --pipeline (default: synthetic:640x480@30, unpaced)",
    )
    p.add_argument("--frames", type=int, default=300, help="frames for --pipeline (default: 300)")
    p.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    """Entry point for the parsed ``bench`` arguments; returns the exit code. Errors are
    reported by ``agent.cli.main`` like every subcommand's (2 for config, 1 otherwise)."""
    return _run(args, sys.stdout, sys.stderr)


def _check_counts(args: argparse.Namespace) -> None:
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: give at least 1 timed run")
    if args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup}: give 0 or more warm-up runs")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration {args.duration}: give a positive number of seconds")


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    threads = parse_threads(args.threads)
    providers = [p.name for p in provider_specs(args.providers, "--providers")] if args.providers else []
    parse_shapes(args.shape)
    input_size = parse_input_size(args.input_size)
    _check_counts(args)
    progress = bool(err.isatty())  # stderr only: stdout stays a clean table or JSON document
    if args.compare is not None:
        if args.model is not None:
            raise ConfigError("give either MODEL or --compare A B, not both")
        from inference.bench_compare import compare

        cdoc = compare(
            args.compare[0], args.compare[1], threads=threads, runs=args.runs, warmup=args.warmup,
            duration=args.duration, input_mode=args.input, shapes=args.shape, progress=progress,
        )  # fmt: skip
        cdoc["machine"] = machine_info()
        _emit(cdoc, args, out, _compare_table)
        return 0
    if args.model is None:
        raise ConfigError(
            "no model given: edge-agent bench MODEL_OR_BUNDLE (a bundle, a .onnx/.tflite file or a zoo name)"
        )
    target = resolve_target(args.model, args.runtime)
    kinds = runtime_kinds(target, args.runtime)
    model_arg = str(target.bundle_root or target.model_path)
    results: list[BenchResult] = []
    for kind in kinds:
        for n in threads:
            results.append(
                bench_isolated(
                    model_arg,
                    kind,
                    n,
                    args.runs,
                    args.warmup,
                    args.duration,
                    args.input,
                    args.shape,
                    progress=progress,
                    providers=providers,
                    input_size=input_size,
                )
            )
    doc: dict[str, Any] = {"results": [r.to_json() for r in results], "machine": machine_info()}
    if args.pipeline:
        from agent.bench_pipeline import bench_pipeline

        doc["pipeline"] = bench_pipeline(
            model_arg, source=args.source, frames=args.frames, threads=threads[0], runtime=kinds[0],
            input_size=input_size,
        )  # fmt: skip
    _emit(doc, args, out, _table)
    return 0


def _emit(doc: dict[str, Any], args: argparse.Namespace, out: TextIO, table: Any) -> None:
    if args.out is not None:
        atomic_write_json(args.out, doc)
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(table(doc) + "\n")
    out.flush()


COLUMNS: tuple[tuple[str, str], ...] = (
    ("runtime", "runtime"), ("provider", "provider"), ("threads", "thr"), ("init_ms", "init ms"),
    ("first_ms", "first ms"), ("mean", "mean"), ("std", "std"), ("min", "min"), ("p50", "p50"),
    ("p90", "p90"), ("p99", "p99"), ("max", "max"), ("fps", "fps"), ("peak_rss_mb", "peak MB"),
    ("rss_model_mb", "model MB"),
)  # fmt: skip


def _cell(r: dict[str, Any], key: str) -> str:
    v = r["latency_ms"][key] if key in r["latency_ms"] else r.get(key, "")
    if isinstance(v, float):
        return (
            f"{v:.1f}" if key in ("fps", "peak_rss_mb", "rss_model_mb", "init_ms") or v >= 100 else f"{v:.3f}"
        )
    return str(v)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table of bench results (latencies in ms)."""
    head = [h for _, h in COLUMNS]
    body = [[_cell(r, k) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']} ({m['arch']}, {m['cores']} cores) · {m['os']} · "
        f"Python {m['python']} · numpy {m['numpy']}"
    )


def _table(doc: dict[str, Any]) -> str:
    rows = doc["results"]
    first = rows[0]
    shapes = ", ".join("x".join(map(str, s)) for s in first["input_shapes"])
    lines = [
        f"model {first['model']} · {first['runtime_version']} · input {first['input']} {shapes} · "
        f"{first['runs']} runs after {first['warmup']} warm-up · latency in ms",
        format_rows(rows),
    ]
    pipe = doc.get("pipeline")
    if pipe:
        lines += [
            f"pipeline on {pipe['source']} ({pipe['frames']} frames, {pipe['threads']} thread(s)): "
            f"{pipe['fps']:.1f} frames/s end to end, latency p50 {pipe['latency_ms']['p50']:.3f} ms",
            f"  bare runtime {pipe['bare_fps']:.1f} frames/s · "
            f"bare source {pipe['decode_fps']:.1f} frames/s · infer() loop {pipe['infer_fps']:.1f} frames/s",
            f"  pipeline ÷ bare runtime {pipe['ratio']:.3f} · pipeline ÷ min(source, runtime) "
            f"{pipe['ratio_vs_min']:.3f}",
        ]
    lines.append("machine: " + _machine_line(doc["machine"]))
    return "\n".join(lines)


def _compare_table(doc: dict[str, Any]) -> str:
    lines = []
    for side in ("a", "b"):
        rows = doc[side]["results"]
        lines.append(f"{side.upper()}: {doc[side]['model']} ({rows[0]['runtime_version']})")
        lines.append(format_rows(rows))
    agree = doc["agreement"]
    lines.append(f"agreement on {agree['inputs']} inputs ({agree['input']}):")
    for o in agree["outputs"]:
        diff = "n/a" if o["max_abs_diff"] is None else f"{o['max_abs_diff']:.6g}"
        note = f"  ({o['note']})" if o.get("note") else ""
        lines.append(f"  output {o['a']} vs {o['b']}: max abs diff {diff}{note}")
    dec = agree.get("decoded")
    if dec:
        lines.append("  decoded: " + ", ".join(f"{k} {v}" for k, v in dec.items()))
    lines.append("machine: " + _machine_line(doc["machine"]))
    return "\n".join(lines)

"""Shared helpers for the benchmarks: timing loops, percentile summaries, RSS, plain engine loops, JSON.

The plain loops (``plain_onnx`` / ``plain_tflite``) call onnxruntime and LiteRT directly, the
way a user would without edge-agent: they are the reference that ``edge-agent bench`` and the
pipeline are compared with.
"""

from __future__ import annotations

import datetime as _dt
import json
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.bench import machine_info, machine_slug, peak_rss_mb, rss_mb, summarize
from inference.fsio import atomic_write_bytes, atomic_write_json

__all__ = [
    "RESULTS_DIR",
    "git_revision",
    "machine_info",
    "machine_slug",
    "median",
    "peak_rss_mb",
    "plain_onnx",
    "plain_tflite",
    "result_stem",
    "rss_mb",
    "summarize",
    "time_calls",
    "write_json",
    "write_text",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
Samples = npt.NDArray[np.float64]


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 0) -> tuple[Samples, float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed.

    Returns (per-call ms in a preallocated array, wall seconds of the timed loop).
    """
    for _ in range(warmup):
        fn()
    clock = time.perf_counter
    buf = np.empty(runs, dtype=np.float64)
    start = clock()
    for i in range(runs):
        t0 = clock()
        fn()
        buf[i] = (clock() - t0) * 1000.0
    return buf, clock() - start


def plain_onnx(
    path: Path, threads: int, feed: npt.NDArray[Any], runs: int, warmup: int
) -> tuple[Samples, float]:
    """A plain ``InferenceSession.run`` loop: intra-op threads set, everything else default."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: feed}
    return time_calls(lambda: sess.run(None, feeds), runs, warmup)


def plain_tflite(
    path: Path, threads: int, feed: npt.NDArray[Any], runs: int, warmup: int
) -> tuple[Samples, float]:
    """A plain LiteRT loop: ``set_tensor``, ``invoke``, ``get_tensor`` of every output."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the older package
        from tflite_runtime.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp = interp.get_input_details()[0]
    if tuple(inp["shape"]) != tuple(feed.shape):
        interp.resize_tensor_input(inp["index"], list(feed.shape))
    interp.allocate_tensors()
    idx = inp["index"]
    outs = [o["index"] for o in interp.get_output_details()]

    def once() -> None:
        interp.set_tensor(idx, feed)
        interp.invoke()
        for o in outs:
            interp.get_tensor(o)

    return time_calls(once, runs, warmup)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send ``sig`` to a child that still runs; SIGKILL it if it has not ended in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def git_revision(root: Path | None = None) -> str | None:
    """The checked-out commit (with ``+dirty`` when the tree has changes), or None outside git."""
    cwd = root or Path(__file__).resolve().parent.parent
    try:

        def git(*argv: str) -> str:
            done = subprocess.run(
                ["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
            return done.stdout.strip()

        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def result_stem(today: _dt.date | None = None, info: dict[str, Any] | None = None) -> str:
    """``<machine>-<date>``, the file name stem of one run's results."""
    return f"{machine_slug(info)}-{(today or _dt.date.today()).isoformat()}"


def _default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (numpy scalars and arrays allowed)."""
    atomic_write_json(path, json.loads(json.dumps(obj, default=_default)))
    return path


def write_text(path: Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode("utf-8"))
    return path

"""Shared helpers for the benchmarks: timing loops, percentile summaries, RSS, plain engine loops, JSON.

The plain loops (``plain_onnx`` / ``plain_tflite``) call onnxruntime and LiteRT directly, the
way a user would without edge-agent: they are the reference that ``edge-agent bench`` and the
pipeline are compared with.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from inference.bench import machine_info, machine_slug, peak_rss_mb, rss_mb, summarize
from inference.fsio import atomic_write_bytes, atomic_write_json

__all__ = [
    "RESULTS_DIR",
    "PairedRatio",
    "git_revision",
    "machine_info",
    "machine_slug",
    "median",
    "others_cpu",
    "paired_ratio",
    "paired_rounds",
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


A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (/proc/stat), or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:9]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_cpu(fn: Callable[[], T]) -> tuple[T, float | None]:
    """Run ``fn``; also return the CPU other processes used meanwhile, in cores (0.0: the machine
    was ours; 1.0: a whole core went to someone else), or None where /proc/stat is missing.
    Clock-tick resolution (10 ms): meant for blocks of a second or more."""
    busy0, own0, t0 = _machine_busy_s(), os.times(), time.perf_counter()
    out = fn()
    busy1, own1, wall = _machine_busy_s(), os.times(), time.perf_counter() - t0
    if busy0 is None or busy1 is None or wall <= 0:
        return out, None
    own = (own1.user + own1.system) - (own0.user + own0.system)
    return out, max(0.0, (busy1 - busy0) - own) / wall


def paired_rounds(rounds: int, a: Callable[[], A], b: Callable[[], B]) -> list[tuple[A, B]]:
    """``rounds`` rounds, each measuring both sides back to back: ``a`` first in even rounds, ``b``
    first in odd ones, so a slow drift of the machine (clock, a neighbour's load) does not favour
    the side that always runs first or last. Returns the (a, b) pairs in round order."""
    pairs: list[tuple[A, B]] = []
    for i in range(rounds):
        if i % 2 == 0:
            x = a()
            pairs.append((x, b()))
        else:
            y = b()
            pairs.append((a(), y))
    return pairs


@dataclass(frozen=True)
class PairedRatio:
    """The median of per-round ratios with their spread: the headline figure of a comparison."""

    median: float
    low: float  # the smallest per-round ratio
    high: float  # the largest
    q1: float  # first and third quartiles (numpy, linear interpolation)
    q3: float
    rounds: tuple[float, ...]  # every per-round ratio, in round order

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {
            "median": round(self.median, digits),
            "range": [round(self.low, digits), round(self.high, digits)],
            "iqr": [round(self.q1, digits), round(self.q3, digits)],
            "rounds": [round(r, digits) for r in self.rounds],
        }

    def text(self) -> str:
        """``0.997 (range 0.951-1.020, IQR 0.990-1.003, 9 rounds)``"""
        return (
            f"{self.median:.3f} (range {self.low:.3f}-{self.high:.3f}, "
            f"IQR {self.q1:.3f}-{self.q3:.3f}, {len(self.rounds)} rounds)"
        )


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> PairedRatio:
    """Per-round ratios ``numerators[i] / denominators[i]`` (each pair measured in the same round,
    see ``paired_rounds``), summarised by their median and spread.

    A ratio of paired rounds cancels what the two sides share in a round (the machine's state
    then), and the median ignores the odd round that one side lost to a neighbour; a ratio of
    each side's best or mean over all rounds compares figures taken at different times."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"paired_ratio needs pairs: {len(numerators)} vs {len(denominators)} values")
    ratios = np.asarray(numerators, dtype=np.float64) / np.asarray(denominators, dtype=np.float64)
    q1, q3 = np.percentile(ratios, [25, 75])
    return PairedRatio(
        median=float(np.median(ratios)),
        low=float(ratios.min()),
        high=float(ratios.max()),
        q1=float(q1),
        q3=float(q3),
        rounds=tuple(float(r) for r in ratios),
    )


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

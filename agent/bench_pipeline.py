"""``edge-agent bench --pipeline``: end-to-end frames/s through the agent's own ``Pipeline``.

Three figures on the same model object and the same frames, so their ratio means something:

- ``decode_fps``: the bare source, ``read()`` in a loop (camera, file decode, generator);
- ``bare_fps``: the bare runtime, ``runtime.run`` on frames preprocessed before the loop
  (the ``edge-agent bench`` figure, on real frames);
- ``fps``: the pipeline (capture thread, queue, preprocessing, inference, decoding, sinks)
  from the first result to the last, with a sink that only records when each result came.

``ratio`` = fps ÷ bare_fps (DESIGN §9, inference-bound model: ≥ 0.97) and ``ratio_vs_min``
= fps ÷ min(decode_fps, bare_fps) (light model: ≥ 0.85). ``infer_fps`` (``LoadedModel.infer``
in a plain loop: preprocessing + run + decoding, no threads) shows where the difference goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.handle import ModelHandle
from agent.pipeline import Pipeline
from agent.sinks import Sink
from agent.source import Frame, open_source
from inference.bench import summarize, timed_loop
from inference.errors import SourceError
from inference.model import LoadedModel, load_model
from inference.result import Result
from inference.runtime import RuntimeOptions

Image = npt.NDArray[np.uint8]
BARE_FRAMES = 16  # distinct preprocessed frames the bare loop cycles through
DEFAULT_SOURCE = "synthetic:640x480@30"


class TimingSink:
    """Records when each result arrived and its ``latency_ms``, into preallocated arrays."""

    def __init__(self, capacity: int) -> None:
        self.at = np.zeros(capacity, dtype=np.float64)
        self.latency_ms = np.zeros(capacity, dtype=np.float64)
        self.n = 0

    def write(self, frame: Frame, result: Result, model: object) -> None:
        i = self.n
        if i < self.at.size:
            self.at[i] = time.perf_counter()
            self.latency_ms[i] = result.latency_ms
            self.n = i + 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_frames(spec: str, count: int, loop: bool = False) -> list[Image]:
    """The first ``count`` images of a source (fewer if it ends)."""
    source = open_source(spec, loop=loop)
    source.open()
    try:
        images: list[Image] = []
        while len(images) < count:
            image = source.read()
            if image is None:
                break
            images.append(image)
        return images
    finally:
        source.close()


def decode_fps(spec: str, frames: int, loop: bool = False) -> dict[str, Any]:
    """Frames/s of the bare source: open, then ``read()`` ``frames`` times (open not timed)."""
    source = open_source(spec, loop=loop)
    source.open()
    try:
        clock = time.perf_counter
        n = 0
        start = clock()
        while n < frames and source.read() is not None:
            n += 1
        wall = clock() - start
    finally:
        source.close()
    if n == 0:
        raise SourceError(f"{spec}: the source gave no frames; check it opens and has images")
    return {"fps": n / wall if wall > 0 else 0.0, "frames": n}


def bare_fps(model: LoadedModel, images: list[Image], runs: int, warmup: int = 5) -> dict[str, Any]:
    """Frames/s of ``model.runtime.run`` on ``images`` preprocessed before the loop."""
    feeds = [[model.preprocessor(img)[0]] for img in images[:BARE_FRAMES]]
    for i in range(warmup):
        model.runtime.run(feeds[i % len(feeds)])
    samples, wall = timed_loop(model.runtime.run, feeds, runs)
    return {"fps": runs / wall if wall > 0 else 0.0, "latency_ms": summarize(samples), "samples_ms": samples}


def infer_fps(model: LoadedModel, images: list[Image], runs: int) -> dict[str, Any]:
    """Frames/s of ``LoadedModel.infer`` (preprocess + run + decode) in a plain loop."""
    frames = images[:BARE_FRAMES]
    clock = time.perf_counter
    start = clock()
    for i in range(runs):
        model.infer(frames[i % len(frames)])
    wall = clock() - start
    return {"fps": runs / wall if wall > 0 else 0.0}


def pipeline_fps(
    model: LoadedModel, spec: str, frames: int, loop: bool = False, sinks: Sequence[Sink] = ()
) -> dict[str, Any]:
    """Run the agent's ``Pipeline`` for ``frames`` frames; steady-state frames/s and latencies.
    ``sinks`` are written after the timing sink (e.g. the drift monitor, to measure its cost)."""
    source = open_source(spec, loop=loop)
    source.open()
    sink = TimingSink(frames)
    pipe = Pipeline(source, ModelHandle(model), [sink, *sinks], max_frames=frames)
    start = time.perf_counter()
    stats = pipe.run()
    wall = time.perf_counter() - start
    n = sink.n
    if n < 2:
        raise SourceError(f"{spec}: the pipeline produced {n} results; the source needs at least 2 frames")
    at = sink.at[:n]
    gaps = np.diff(at) * 1000.0
    return {
        "fps": (n - 1) / float(at[-1] - at[0]),
        "fps_wall": n / wall,
        "frames": n,
        "errors": stats.errors,
        "dropped": stats.dropped,
        "latency_ms": summarize(sink.latency_ms[:n]),
        "gap_ms": summarize(gaps),
        "latency_samples_ms": sink.latency_ms[:n].copy(),
    }


def load(
    model: str | Path, threads: int, runtime: str | None = None, input_size: tuple[int, int] | None = None
) -> LoadedModel:
    return load_model(Path(model), RuntimeOptions(threads=threads), runtime, input_size=input_size)


def measure_once(model: LoadedModel, spec: str, frames: int, loop: bool = False) -> dict[str, Any]:
    """One round: decode, bare runtime and pipeline figures on the same frames."""
    images = read_frames(spec, min(frames, BARE_FRAMES), loop)
    if not images:
        raise SourceError(f"{spec}: the source gave no frames; check it opens and has images")
    dec = decode_fps(spec, frames, loop)
    bare = bare_fps(model, images, runs=frames)
    inf = infer_fps(model, images, runs=max(frames // 2, 1))
    pipe = pipeline_fps(model, spec, frames, loop)
    return {
        "decode_fps": dec["fps"],
        "bare_fps": bare["fps"],
        "bare_latency_ms": bare["latency_ms"],
        "infer_fps": inf["fps"],
        "fps": pipe["fps"],
        "fps_wall": pipe["fps_wall"],
        "frames": pipe["frames"],
        "errors": pipe["errors"],
        "dropped": pipe["dropped"],
        "latency_ms": pipe["latency_ms"],
        "gap_ms": pipe["gap_ms"],
        "ratio": pipe["fps"] / bare["fps"],
        "ratio_vs_min": pipe["fps"] / min(dec["fps"], bare["fps"]),
        "_bare_samples_ms": bare["samples_ms"],
        "_pipeline_latency_ms": pipe["latency_samples_ms"],
    }


def bench_pipeline(
    model: str | Path,
    source: str | None = None,
    frames: int = 300,
    threads: int = 1,
    runtime: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The ``--pipeline`` figures for the CLI (one round; see ``measure_once``)."""
    spec = source or DEFAULT_SOURCE
    if frames < 2:
        from inference.errors import ConfigError

        raise ConfigError(f"--frames {frames}: the pipeline needs at least 2 frames")
    lm = load(model, threads, runtime, input_size)
    try:
        lm.infer(read_frames(spec, 1)[0])  # first inference outside the timing, as in the bare figure
        out = measure_once(lm, spec, frames)
    finally:
        lm.close()
    for key in [k for k in out if k.startswith("_")]:
        out.pop(key)
    out.update({"source": spec, "threads": threads, "model": lm.name})
    return out

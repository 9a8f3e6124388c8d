"""Hot swap under both swap policies: drops, result gaps, rollback time, RSS (issue 3; DESIGN §9).

Each policy runs in its own fresh process (``python -m benchmarks.hot_swap --policy X
--json``), so its RSS figures belong to that run alone. In it, the real agent parts run as
the daemon wires them: ``ModelStore`` + ``UpdateMachine`` + ``ModelManager`` (default
``ManagerPolicy``: validation isolated in a child process) + ``Pipeline`` with the manager
as a sink and its ``on_error`` hook, on a lossless source paced at 30 frames/s.

The model is a generated ONNX classifier: 64x64 image → flatten → MatMul by a
12288x816 float32 weight (40 MB, used on every frame) → ReLU → MatMul 816x4 → softmax,
so its memory footprint stands well clear of the engine's own. Three bundles are built:
v1 (seed), v2 (a different good model), v3 (the confidence collapse: the last weight is
zero, so every answer is a uniform 0.25; its golden pairs pass, probation fails). They are
built twice: as ``bundle create --optimize`` makes them (with the ORT-format companion the
agent loads memory-mapped: inference/ort_format.py), on which the targets are judged, and
plain (the ``.onnx`` alone), whose availability swap is measured for comparison.

In each policy's process:

1. boot on v1, run, then measure the steady state (RSS samples, result gaps);
2. submit v2: the swap window runs from the submit until the manager is idle again
   (validation, load, warm-up, swap, probation, commit). Measured: frames dropped (gaps
   in the frame indices of the results), the longest gap between two results ÷ the
   median gap of the steady state (up to the end of the phase after the window, since
   v1 is unloaded between two frames after the manager is idle), the gap at the switch
   itself, peak RSS in the window (samples every ~5 ms in a thread, plus VmHWM reset
   before the window through /proc/self/clear_refs), RSS through probation, and for
   ``memory`` the manager's ``last_gap_ms``. The update phase is sampled with the RSS,
   so the longest gap is attributed to a phase; the manager's calls on the inference
   thread (``call_between_frames``) are timed;
3. submit v3: probation fails and the manager rolls back. Measured: from
   ``manager.last_decision_at`` to the completion of the first result served by v2 (in ms
   and in median frame intervals), and how many results v3 served after the decision.

A separate fresh process loads v2 alone (engine imported first) and gives the model's own
footprint: VmRSS after loading and two inferences minus before, and the peak added while
loading (for each build of the bundles, and which file the session was made from). The
availability target is (peak during the swap − steady before) ÷ footprint.

Run alone: ``python -m benchmarks.hot_swap [--quick]`` (writes
results/hot_swap-<machine>-<date>[-N].json, never over an earlier run); one policy:
``--policy availability [--optimize] --json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import (
    RESULTS_DIR,
    git_revision,
    machine_info,
    median,
    result_stem,
    rss_mb,
    summarize,
    write_json,
)
from inference.bench import _read_proc_status

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("availability", "memory")
SIDE = 64  # input 1x3x64x64; the frames are 64x64 too
HIDDEN = 816  # 12288 x 816 float32 = 40.1 MB
CLASSES = 4
STRENGTH = 30.0  # scale of the last weight: confident answers (0 = the collapse)
FPS = 30.0
SAMPLE_S = 0.005  # RSS sampling period


@dataclass(frozen=True)
class Plan:
    """How long each phase lasts (full or quick)."""

    warm_s: float
    steady_s: float
    probation_frames: int
    after_s: float
    timeout_s: float

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(warm_s=0.4, steady_s=0.8, probation_frames=15, after_s=0.5, timeout_s=60.0)
        return cls(warm_s=1.0, steady_s=3.0, probation_frames=60, after_s=1.5, timeout_s=90.0)


# --------------------------------------------------------------------------------------------
# the models and bundles


def classifier_model(
    path: Path, w1: npt.NDArray[np.float32], seed: int, strength: float, side: int = SIDE
) -> Path:
    """image [1,3,side,side] -> flatten -> MatMul w1 -> Relu -> MatMul w2 * strength -> softmax [1,4]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w2 = (rng.standard_normal((w1.shape[1], CLASSES)) * strength).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["image", "flat"], ["x"]),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 3 * side * side], np.int64), "flat"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        "hot_swap_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, producer_name="edge-agent-benchmarks", opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def frames(n: int = 16) -> list[npt.NDArray[np.uint8]]:
    """``n`` distinct 64x64 BGR frames (smooth random blobs), cycled by the source."""
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append(np.ascontiguousarray(np.kron(small, np.ones((8, 8, 1), np.uint8))))
    return out


def build_bundles(folder: Path, optimize: bool = False) -> dict[str, Path]:
    """v1 (seed), v2 (good candidate), v3 (confidence collapse) under ``folder``; ``optimize``:
    with the ORT-format companion (``bundle create --optimize``)."""
    from inference.bundle_builder import create_bundle

    folder.mkdir(parents=True, exist_ok=True)
    golden = frames(2)
    out: dict[str, Path] = {}
    for key, version, seed, strength in (("v1", 1, 1, STRENGTH), ("v2", 2, 2, STRENGTH), ("v3", 3, 3, 0.0)):
        rng = np.random.default_rng(100 + seed)
        w1 = (rng.standard_normal((3 * SIDE * SIDE, HIDDEN), dtype=np.float32) / np.float32(SIDE)).astype(
            np.float32
        )
        model = classifier_model(folder / f"{key}.onnx", w1, seed, strength)
        del w1
        create_bundle(
            model,
            folder / key,
            name="big-cls",
            version=version,
            task="classification",
            decoder="classification",
            labels=[f"c{i}" for i in range(CLASSES)],
            input_spec={"color": "BGR", "scale": 1 / 255},
            golden_images=golden,
            optimize=optimize,
        )
        model.unlink()
        out[key] = folder / key
    return out


# --------------------------------------------------------------------------------------------
# the source, the sink, the RSS sampler


class PacedFrames:
    """A lossless source (``live`` False): frame ``i`` is ready at ``t0 + i / fps``.

    A reader that falls behind (the pipeline stalled and the queue filled up) gets the
    late frames at once, as from a file; nothing is ever skipped."""

    spec = f"paced:{SIDE}x{SIDE}@{FPS:g}"
    live = False

    def __init__(self, images: list[npt.NDArray[np.uint8]], fps: float = FPS) -> None:
        self.images = images
        self.interval = 1.0 / fps
        self.served = 0
        self.ready: list[float] = []  # monotonic time each frame was handed over, by index
        self._t0 = 0.0

    def open(self) -> None:
        self._t0 = time.monotonic()
        self.served = 0
        self.ready = []

    def read(self) -> npt.NDArray[np.uint8] | None:
        due = self._t0 + self.served * self.interval
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        image = self.images[self.served % len(self.images)]
        self.served += 1
        self.ready.append(time.monotonic())
        return image

    def close(self) -> None:
        pass


class TimingSink:
    """Per result: (frame index, model version, monotonic time written); its latency apart."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float]] = []
        self.latency_ms: list[float] = []

    def write(self, frame: Any, result: Any, model: Any) -> None:
        self.rows.append((frame.index, int(model.version), time.monotonic()))
        self.latency_ms.append(float(result.latency_ms))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def count(self) -> int:
        return len(self.rows)


class TimedCalls:
    """Wraps ``pipeline.call_between_frames``: records how long each call the manager makes on
    the inference thread takes (swaps, unloading models), as (monotonic start, ms, name)."""

    def __init__(self, inner: Callable[[Callable[[], object]], None]) -> None:
        self.inner = inner
        self.calls: list[tuple[float, float, str]] = []

    def __call__(self, fn: Callable[[], object]) -> None:
        name = getattr(fn, "__qualname__", type(fn).__name__)

        def timed() -> object:
            t0 = time.monotonic()
            try:
                return fn()
            finally:
                self.calls.append((t0, (time.monotonic() - t0) * 1000.0, name))

        self.inner(timed)


def _source(model: Any) -> str:
    """The file a loaded model's session was built from (``model.onnx`` or ``model.ort``)."""
    src = getattr(model.runtime, "source", None)
    return Path(src).name if src is not None else Path(model.bundle.model_path).name


def _vm_hwm_mb() -> float:
    return _read_proc_status().get("VmHWM", 0) / 1024.0


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """VmRSS every ``period`` seconds in a thread: (monotonic time, MiB) samples, and what
    ``probe`` says at that moment (the update phase) whenever it changes."""

    def __init__(self, period: float = SAMPLE_S, probe: Callable[[], str] | None = None) -> None:
        self.period = period
        self.probe = probe
        self.samples: list[tuple[float, float]] = []
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            now = time.monotonic()
            self.samples.append((now, rss_mb()))
            if self.probe is not None:
                what = self.probe()
                if what != last:
                    self.changes.append((now, what))
                    last = what
            self._stop.wait(self.period)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def between(self, t0: float, t1: float) -> list[float]:
        return [v for t, v in list(self.samples) if t0 <= t <= t1]


class Window:
    """One measured phase: its time span and the VmHWM reached in it (reset at its start)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reset = _reset_hwm()
        self.t0 = time.monotonic()
        self.t1 = self.t0
        self.hwm = 0.0

    def close(self) -> None:
        self.t1 = time.monotonic()
        self.hwm = _vm_hwm_mb() if self.reset else 0.0

    def peak(self, sampler: RssSampler) -> float:
        values = sampler.between(self.t0, self.t1)
        return max([*values, self.hwm]) if values or self.hwm else 0.0

    def steady(self, sampler: RssSampler) -> float:
        values = sampler.between(self.t0, self.t1)
        return float(statistics.median(values)) if values else 0.0


# --------------------------------------------------------------------------------------------
# one policy, in this process


def _wait_until(pred: Any, timeout: float, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _gaps_ms(rows: list[tuple[int, int, float]]) -> list[float]:
    return [(b[2] - a[2]) * 1000.0 for a, b in itertools.pairwise(rows)]


def _in(rows: list[tuple[int, int, float]], t0: float, t1: float) -> list[tuple[int, int, float]]:
    """The rows completed in [t0, t1], plus the one before (so the first gap in the window counts)."""
    idx = [i for i, r in enumerate(rows) if t0 <= r[2] <= t1]
    if not idx:
        return []
    return rows[max(0, idx[0] - 1) : idx[-1] + 1]


def _window_gaps(
    rows: list[tuple[int, int, float]], t0: float, t1: float, median_ms: float
) -> dict[str, Any]:
    part = _in(rows, t0, t1)
    gaps = _gaps_ms(part)
    if not gaps:
        return {"results": len(part), "longest_gap_ms": None, "longest_gap_ratio": None, "_gaps": []}
    k = int(np.argmax(gaps))
    return {
        "results": len(part) - 1,
        "longest_gap_ms": round(gaps[k], 2),
        "longest_gap_ratio": round(gaps[k] / median_ms, 3),
        "longest_gap_before_frame": part[k + 1][0],
        "gaps_over_1_5": sum(1 for g in gaps if g > 1.5 * median_ms),
        "_gaps": gaps,
    }


def _phase_at(changes: list[tuple[float, str]], t: float) -> str | None:
    """The update phase at monotonic time ``t``, from the sampler's record of changes."""
    phase = None
    for when, what in changes:
        if when > t:
            break
        phase = what
    return phase


def _phase_span(
    changes: list[tuple[float, str]], name: str, t0: float, t1: float
) -> tuple[float, float] | None:
    """The first span of phase ``name`` that starts in [t0, t1]."""
    for k, (when, what) in enumerate(changes):
        if what == name and t0 <= when <= t1:
            end = changes[k + 1][0] if k + 1 < len(changes) else t1
            return when, end
    return None


def _switch(rows: list[tuple[int, int, float]], frm: int, to: int) -> tuple[int, float] | None:
    """(index in rows, gap ms) of the first result of ``to`` right after one of ``frm``."""
    for i in range(1, len(rows)):
        if rows[i - 1][1] == frm and rows[i][1] == to:
            return i, (rows[i][2] - rows[i - 1][2]) * 1000.0
    return None


def measure_policy(policy: str, bundles: dict[str, Path], quick: bool) -> dict[str, Any]:
    """The whole scenario for one swap policy, in this process (see the module docstring)."""
    from agent.handle import ModelHandle
    from agent.manager import ManagerPolicy, ModelManager
    from agent.pipeline import Pipeline
    from monitoring.job_history import JobHistory
    from monitoring.metrics_store import MetricsStore
    from ota.store import ModelStore
    from ota.update_events import UpdateEvents
    from ota.update_machine import UpdateMachine

    plan = Plan.of(quick)
    mpolicy = ManagerPolicy(swap_policy=policy, probation_frames=plan.probation_frames)
    out: dict[str, Any] = {
        "policy": policy,
        "isolate_validation": mpolicy.isolate_validation,
        "fps": FPS,
        "probation_frames": plan.probation_frames,
    }
    sampler = RssSampler()
    with tempfile.TemporaryDirectory(prefix=f"hot-swap-{policy}-") as tmp:
        root = Path(tmp)
        store = ModelStore(root / "store")
        machine = UpdateMachine(store.state_path)
        metrics = MetricsStore(root / "metrics.db")
        events = UpdateEvents()
        events.subscribe(JobHistory(metrics))
        manager = ModelManager(store, machine, policy=mpolicy, events=events)
        handle = ModelHandle(manager.boot(seed=bundles["v1"]))
        sink = TimingSink()
        source = PacedFrames(frames())
        source.open()
        pipeline = Pipeline(source, handle, [sink, manager])
        pipeline.on_error = manager.on_error
        calls = TimedCalls(pipeline.call_between_frames)
        manager.attach(handle, calls)
        sampler.probe = lambda: manager.machine.state.value
        manager.start()
        runner = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
        sampler.start()
        runner.start()
        try:
            time.sleep(plan.warm_s)
            steady = Window("steady")
            time.sleep(plan.steady_s)
            steady.close()

            swap = Window("swap")
            manager.submit(bundles["v2"], origin="benchmark")
            swap_idle = manager.wait_idle(plan.timeout_s)
            swap.close()
            gap_swap = manager.last_gap_ms
            swap_job = dict(manager.last_job)
            serving = store.current()
            committed = serving is not None and serving.version == 2 and machine.state.value == "IDLE"
            out["loaded_from"] = _source(handle.current)
            after = Window("after")
            time.sleep(plan.after_s)
            after.close()

            rb = Window("rollback")
            manager.submit(bundles["v3"], origin="benchmark")
            rb_idle = manager.wait_idle(plan.timeout_s)
            rb.close()
            rb_job = dict(manager.last_job)
            decision = manager.last_decision_at
            n = sink.count()
            _wait_until(lambda: sink.count() >= n + 5, 5.0)
            after_rb = Window("after_rollback")
            time.sleep(min(plan.after_s, 1.0))
            after_rb.close()
        finally:
            manager.stop()
            pipeline.stop()
            runner.join(timeout=10)
            sampler.stop()
            handle.current.close()
            metrics.close()

    rows = list(sink.rows)
    index = [r[0] for r in rows]
    dropped = sum(b - a - 1 for a, b in itertools.pairwise(index) if b != a + 1)
    steady_gaps = _gaps_ms(_in(rows, steady.t0, steady.t1))
    median_ms = median(steady_gaps) if steady_gaps else 1000.0 / FPS
    out.update(
        {
            "frames": len(rows),
            "dropped": dropped,
            "pipeline_dropped": pipeline.dropped,
            "errors": pipeline.errors,
            "median_gap_ms": round(median_ms, 3),
            "steady_gap_p99_ms": round(float(np.percentile(steady_gaps, 99)), 3) if steady_gaps else None,
            # the control: the same figure with no update running (the machine's own jitter)
            "steady_longest_gap_ratio": round(max(steady_gaps) / median_ms, 3) if steady_gaps else None,
            "latency_p50_ms": round(median(sink.latency_ms), 3) if sink.latency_ms else None,
        }
    )

    # gaps: from the submit until the phase after it ends (the unloading of the replaced model
    # runs between two frames after the manager is idle again)
    sw = _window_gaps(rows, swap.t0, after.t1, median_ms)
    at = sw.get("longest_gap_before_frame")
    at_t = next((r[2] for r in rows if r[0] == at), None) if at is not None else None
    sw["longest_gap_phase"] = None if at_t is None else _phase_at(sampler.changes, at_t)
    switch = _switch(rows, 1, 2)
    first_v2 = next((r for r in rows if r[1] == 2), None)
    swap_gaps = sw.pop("_gaps")
    out["swap"] = {
        "idle": swap_idle,
        "outcome": swap_job.get("outcome"),
        "phase": swap_job.get("phase"),
        "committed": committed,
        "window_s": round(swap.t1 - swap.t0, 3),  # submit → manager idle
        "submit_to_serving_ms": round((first_v2[2] - swap.t0) * 1000.0, 1) if first_v2 else None,
        "switch_at_frame": rows[switch[0]][0] if switch else None,
        "switch_gap_ms": round(switch[1], 2) if switch else None,
        "switch_gap_ratio": round(switch[1] / median_ms, 3) if switch else None,
        **sw,
        "memory_gap_ms": None if gap_swap is None else round(gap_swap, 2),
    }
    versions_served = sorted({r[1] for r in rows})
    out["versions_served"] = versions_served

    rbw = _window_gaps(rows, rb.t0, after_rb.t1, median_ms)
    at = rbw.get("longest_gap_before_frame")
    at_t = next((r[2] for r in rows if r[0] == at), None) if at is not None else None
    rbw["longest_gap_phase"] = None if at_t is None else _phase_at(sampler.changes, at_t)
    rb_gaps = rbw.pop("_gaps")
    back = None
    on_candidate = None
    if decision is not None:
        back = next((r for r in rows if r[2] > decision and r[1] == 2), None)
        on_candidate = sum(1 for r in rows if r[2] > decision and r[1] == 3)
    rb_ms = (back[2] - decision) * 1000.0 if back is not None and decision is not None else None
    # the agent's own part: from the decision, or from the next frame being ready if that came
    # later, to that frame's result (the rest is waiting for the source's next frame)
    own_ms = None
    if back is not None and decision is not None and back[0] < len(source.ready):
        own_ms = (back[2] - max(decision, source.ready[back[0]])) * 1000.0
    out["between_frames_calls"] = {  # the manager's work on the inference thread: [what, ms]
        name: [[what, round(ms, 2)] for t, ms, what in calls.calls if t0 <= t <= t1]
        for name, (t0, t1) in (("swap", (swap.t0, after.t1)), ("rollback", (rb.t0, after_rb.t1)))
    }
    out["rollback"] = {
        "idle": rb_idle,
        "outcome": rb_job.get("outcome"),
        "reason": rb_job.get("reason"),
        "candidate_results": sum(1 for r in rows if r[1] == 3),
        "candidate_results_after_decision": on_candidate,
        "results_written_after_verdict": manager.results_after_verdict,
        "decision_to_previous_ms": None if rb_ms is None else round(rb_ms, 2),
        "decision_to_previous_intervals": None if rb_ms is None else round(rb_ms / median_ms, 3),
        "previous_ready_to_result_ms": None if own_ms is None else round(own_ms, 2),
        "swap_back_ms": None if manager.last_rollback_ms is None else round(manager.last_rollback_ms, 3),
        "memory_gap_ms": None
        if policy != "memory" or manager.last_gap_ms is None
        else round(manager.last_gap_ms, 2),
        **rbw,
    }
    probation = _phase_span(sampler.changes, "PROBATION", swap.t0, swap.t1)
    # both models loaded (availability) or only the new one (memory), load transients over
    two = sampler.between(*probation) if probation else []
    out["rss_mb"] = {
        "steady_before": round(steady.steady(sampler), 1),
        "during_probation": round(float(statistics.median(two)), 1) if two else None,
        "peak_before": round(steady.peak(sampler), 1),
        "peak_during_swap": round(swap.peak(sampler), 1),
        "steady_after": round(after.steady(sampler), 1),
        "peak_during_rollback": round(rb.peak(sampler), 1),
        "steady_after_rollback": round(after_rb.steady(sampler), 1),
        "samples": len(sampler.samples),
        "hwm_reset": swap.reset,
    }
    out["_gaps"] = {"swap": swap_gaps, "rollback": rb_gaps, "steady": steady_gaps}
    out["_timeline"] = {  # for a look afterwards (--policy X): times in s from the steady window
        "results": [
            [i, v, round(t - steady.t0, 4), round(lat, 2), round(source.ready[i] - steady.t0, 4)]
            for (i, v, t), lat in zip(rows, sink.latency_ms, strict=True)
            if t >= steady.t0
        ],
        "phases": [[round(t - steady.t0, 4), what] for t, what in sampler.changes],
        "between_frames": [[round(t - steady.t0, 4), round(ms, 3), name] for t, ms, name in calls.calls],
        "rss": [[round(t - steady.t0, 4), round(v, 1)] for t, v in sampler.samples[::4] if t >= steady.t0],
    }
    return out


# --------------------------------------------------------------------------------------------
# the footprint of one model, in this process


def measure_footprint(bundle: Path) -> dict[str, Any]:
    """RSS added by loading ``bundle`` alone (engine imported before the baseline)."""
    import onnxruntime  # noqa: F401  (the engine's code is not the model's footprint)

    import inference.onnx_runtime  # noqa: F401
    from inference.model import load_model

    image = frames(1)[0]
    sampler = RssSampler()
    before = rss_mb()
    _reset_hwm()
    sampler.start()
    t0 = time.perf_counter()
    model = load_model(bundle)
    load_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(2):
        model.infer(image)
    time.sleep(0.05)
    sampler.stop()
    after = rss_mb()
    hwm = _vm_hwm_mb()
    peak = max([hwm, *(v for _, v in sampler.samples)])
    source = _source(model)
    model.close()
    return {
        "bundle": bundle.name,
        "loaded_from": source,
        "model_file_mb": round((bundle / "model.onnx").stat().st_size / 2**20, 2),
        "rss_before_mb": round(before, 1),
        "footprint_mb": round(after - before, 2),
        "load_peak_mb": round(peak - before, 2),
        "load_ms": round(load_ms, 1),
    }


# --------------------------------------------------------------------------------------------
# the parent: children, targets


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "benchmarks.hot_swap", *args, "--json"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, timeout=timeout, check=False, cwd=ROOT)
    text = proc.stdout.decode("utf-8", errors="replace").strip()
    if proc.returncode != 0 or not text:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with status {proc.returncode}: see its stderr above")
    doc: dict[str, Any] = json.loads(text.splitlines()[-1])
    return doc


def _target(what: str, value: Any, target: str, ok: bool | None) -> dict[str, Any]:
    return {"what": what, "value": value, "target": target, "ok": ok}


def _add_ratios(res: dict[str, Any], footprint: dict[str, Any]) -> None:
    """RSS added during the swap ÷ the model's own footprint (and ÷ its load peak)."""
    rss = res["rss_mb"]
    fp, load_peak = float(footprint["footprint_mb"]), float(footprint["load_peak_mb"])
    added = rss["peak_during_swap"] - rss["steady_before"]
    two = rss.get("during_probation")
    rss["added_during_swap"] = round(added, 1)
    rss["added_over_footprint"] = round(added / fp, 3) if fp > 0 else None
    rss["added_over_load_peak"] = round(added / load_peak, 3) if load_peak > 0 else None
    rss["added_during_probation_over_footprint"] = (
        round((two - rss["steady_before"]) / fp, 3) if two is not None and fp > 0 else None
    )


def _targets(policy: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows against DESIGN §9 for one policy."""
    swap, rb, rss = res["swap"], res["rollback"], res["rss_mb"]
    ratio, intervals = swap["longest_gap_ratio"], rb["decision_to_previous_intervals"]
    serving = (
        round(rb["swap_back_ms"] / res["median_gap_ms"], 4)
        if rb.get("swap_back_ms") is not None and res.get("median_gap_ms")
        else None
    )
    if policy == "memory" and rb.get("decision_to_previous_intervals") is not None:
        serving = rb["decision_to_previous_intervals"]  # the reload is the swap
    rows = [
        _target(f"{policy}: frames dropped by a hot swap (lossless source)", res["dropped"], "0",
                res["dropped"] == 0),
        _target(f"{policy}: longest gap between results during the swap ÷ median gap", ratio,
                "≤ 1.5" if policy == "availability" else "- (drain, unload, load)",
                (ratio is not None and ratio <= 1.5) if policy == "availability" else None),
        _target(f"{policy}: (control) the same, steady window without an update",
                res["steady_longest_gap_ratio"], "-", None),
        # "previous version serving" (DESIGN §9): the handle points at it and it takes the very
        # next frame; the swap itself happens on the results thread at the decision
        _target(f"{policy}: rollback, decision → previous version serving (handle swapped) ÷ median frame "
                "interval", serving, "≤ 1" if policy == "availability" else "- (reload)",
                (serving is not None and serving <= 1.0) if policy == "availability" else None),
        # for reference: that includes the wait for the source's next frame (≈ one interval at a
        # paced source) and its inference; the next rows say that very frame was the previous version's
        _target(f"{policy}: rollback, decision → previous version's first result ÷ median frame interval",
                intervals, "-", None),
        _target(f"{policy}: rollback, results served by the candidate after the decision",
                rb["candidate_results_after_decision"], "0" if policy == "availability" else "-",
                rb["candidate_results_after_decision"] == 0 if policy == "availability" else None),
        _target(f"{policy}: rollback, that first frame of the previous version: ready → result, ms",
                rb["previous_ready_to_result_ms"], "-", None),
    ]  # fmt: skip
    if policy == "availability":
        r = rss["added_over_footprint"]
        rows += [
            _target("availability: (peak RSS during the swap − steady) ÷ the new model's own footprint",
                    r, "≤ 1.2", None if r is None else r <= 1.2),
            _target("availability: (RSS through probation, both models − steady) ÷ footprint",
                    rss["added_during_probation_over_footprint"], "-", None),
            _target("availability: (peak RSS during the swap − steady) ÷ the model's own load peak",
                    rss["added_over_load_peak"], "-", None),
        ]  # fmt: skip
    else:
        rows.append(
            _target("memory: swap gap without a model, ms (last_gap_ms)", swap["memory_gap_ms"], "-", None)
        )
    return rows


def _note(policy: str, res: dict[str, Any]) -> str:
    swap, rb, rss = res["swap"], res["rollback"], res["rss_mb"]
    return (
        f"{policy}: {res['frames']} results at {FPS:g} frames/s, median gap {res['median_gap_ms']:.1f} ms, "
        f"inference p50 {res['latency_p50_ms']} ms; swap window {swap['window_s']:.1f} s, longest gap "
        f"{swap['longest_gap_ms']} ms (in {swap.get('longest_gap_phase')}); RSS steady "
        f"{rss['steady_before']} MB, through probation {rss['during_probation']} MB, peak during the swap "
        f"{rss['peak_during_swap']} MB, after {rss['steady_after']} MB; rollback: previous version's first "
        f"result {rb['decision_to_previous_ms']} ms after the decision, {rb['previous_ready_to_result_ms']} "
        f"ms after its frame was ready ({rb['candidate_results_after_decision']} results by the candidate "
        f"after the decision)"
    )


def run(quick: bool = False) -> dict[str, Any]:
    """Both policies on the ``--optimize`` bundles (the targets), the availability swap on the plain
    ones for comparison (under ``plain``)."""
    plan = Plan.of(quick)
    out: dict[str, Any] = {"policies": {}, "targets": [], "latency_ms": {}, "notes": [], "plain": {}}
    q = ["--quick"] if quick else []
    with tempfile.TemporaryDirectory(prefix="bench-hot-swap-") as tmp:
        t0 = time.perf_counter()
        sets = {
            "optimized": build_bundles(Path(tmp) / "optimized", optimize=True),
            "plain": build_bundles(Path(tmp) / "plain"),
        }
        out["build_s"] = round(time.perf_counter() - t0, 2)
        footprint = _child(["--footprint", str(sets["optimized"]["v2"])], 120.0)
        plain_fp = _child(["--footprint", str(sets["plain"]["v2"])], 120.0)
        out["footprint"] = footprint
        for policy in POLICIES:
            args = ["--policy", policy, "--bundles", str(Path(tmp) / "optimized"), *q]
            out["policies"][policy] = _child(args, 2 * plan.timeout_s + 60)
        args = ["--policy", "availability", "--bundles", str(Path(tmp) / "plain"), *q]
        plain = _child(args, 2 * plan.timeout_s + 60)
    for policy, res in out["policies"].items():
        _add_ratios(res, footprint)
        gaps = res.pop("_gaps")
        res.pop("_timeline", None)
        out["latency_ms"][f"{policy}: result gaps, swap window"] = gaps["swap"]
        out["latency_ms"][f"{policy}: result gaps, steady"] = gaps["steady"]
        out["targets"] += _targets(policy, res)
        out["notes"].append(_note(policy, res))
    _add_ratios(plain, plain_fp)
    plain.pop("_gaps")
    plain.pop("_timeline", None)
    out["plain"] = {"footprint": plain_fp, "availability": plain}
    served = out["policies"]["availability"].get("loaded_from")
    out["targets"] += [
        _target("availability: the new model's session was built from (bundle create --optimize)", served,
                "model.ort", served == "model.ort"),
        _target("availability, plain bundle (.onnx only): (peak RSS in the swap − steady) ÷ its footprint",
                plain["rss_mb"]["added_over_footprint"], "-", None),
    ]  # fmt: skip
    out["notes"].append("plain bundle, " + _note("availability", plain))
    for what, fp in (("with its ORT-format companion", footprint), ("plain", plain_fp)):
        out["notes"].append(
            f"model ({what}): a {fp['model_file_mb']} MB ONNX classifier (a 12288x816 float32 MatMul); "
            f"loaded from {fp['loaded_from']} alone in a fresh process it adds {fp['footprint_mb']} MB RSS, "
            f"and {fp['load_peak_mb']} MB at the peak of loading ({fp['load_ms']} ms)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hot_swap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="shorter phases (a smoke run)")
    ap.add_argument("--policy", choices=POLICIES, help="measure one policy in this process")
    ap.add_argument("--bundles", type=Path, help="folder with v1/, v2/, v3/ (default: build them)")
    ap.add_argument(
        "--optimize", action="store_true", help="build the bundles with --optimize (no --bundles)"
    )
    ap.add_argument("--footprint", type=Path, metavar="BUNDLE", help="measure one model's own footprint")
    ap.add_argument("--json", action="store_true", help="print one JSON line (child mode)")
    args = ap.parse_args(argv)
    if args.footprint is not None:
        print(json.dumps(measure_footprint(args.footprint)))
        return 0
    if args.policy is not None:
        with contextlib.ExitStack() as stack:
            if args.bundles is None:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-hot-swap-")))
                bundles = build_bundles(tmp / "bundles", optimize=args.optimize)
            else:
                bundles = {k: args.bundles / k for k in ("v1", "v2", "v3")}
            res = measure_policy(args.policy, bundles, args.quick)
        print(json.dumps(res) if args.json else json.dumps(res, indent=2))
        return 0
    load_before = os.getloadavg()[0]
    result = run(args.quick)
    result["machine"] = machine_info()
    result["git"] = git_revision()
    result["date"] = dt.date.today().isoformat()
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # start, end
    samples = result.pop("latency_ms")
    result["latency_ms"] = {k: summarize(v) for k, v in samples.items() if v}
    stem, n = f"hot_swap-{result_stem()}", 1
    while (RESULTS_DIR / f"{stem}{f'-{n}' if n > 1 else ''}.json").exists():  # never overwrite a run
        n += 1
    path = write_json(RESULTS_DIR / f"{stem}{f'-{n}' if n > 1 else ''}.json", result)
    for t in result["targets"]:
        print(f"{t['what']}: {t['value']} (target {t['target']})", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

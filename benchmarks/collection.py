"""The cost of frame collection (issue 10; DESIGN §9: monitoring + sampling on ÷ off ≥ 0.97).

- Throughput: the agent's ``Pipeline`` on a video file (MJPEG 640x480, the demo faces) with
  BlazeFace (LiteRT, the light model: where any per-frame cost shows most). Three variants run
  interleaved in every round, in an order that alternates between rounds:

  - ``off``: no sinks;
  - ``on``: what a device runs: the ``DriftMonitor`` with its defaults, and a ``Collector``
    with the default ``SamplingPolicy`` (uncertain 0.3-0.6 with quotas, a 0.1 % audit) into a
    ``Spool`` in a temporary folder, with an ``Uploader`` PUTting to a real HTTP server on
    loopback (a separate process, as a real server is: it reads each body and answers 201,
    storing nothing). ``lossless=True`` as the daemon sets it for a file source;
  - ``busy``: the worst case: a strategy taking every frame (random, share 1.0, no quotas,
    ``dedup_bits`` 0), so the worker's queue is full most of the time. ``lossless=False`` here,
    so a full queue drops (counted in ``queue_dropped``) instead of holding the loop;
  - ``on_1worker``: ``on`` with one upload worker instead of the default two (a diagnostic: with
    two, idle workers wake each other through the uploader's shared condition and query the
    spool tens of thousands of times a second; with one, an idle worker sleeps).

  The headline is the median of the per-round paired ratios on ÷ off, with their range; also
  busy ÷ off. Kept, duplicates, queue drops and uploads are reported per variant.
- Selection on the results thread, in µs (median of many calls): ``Collector.write`` for a
  frame no strategy takes (the common case) and ``Sampler.select`` alone, for a detector result
  with 5 boxes (default policy) and a 1000-class classifier result (an uncertain/margin strategy).
- The worker's cost per kept frame, in ms: shrink to 1280, ``phash64``, JPEG (quality 85),
  ``Spool.put`` (with its fsyncs), at 640x480 and 1920x1080; and one item's upload (the JPEG
  and its sidecar: two PUTs) to the loopback server.

Run alone: ``python -m benchmarks.collection [--quick]`` (writes
results/collection-<machine>-<date>.json).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, median, result_stem, stop_process, write_json

MODEL = "blazeface"
DEMO = "demo:faces:640x480@0"
FRAMES, QUICK_FRAMES = 3000, 400
ROUNDS, QUICK_ROUNDS = 7, 3
VARIANTS = ("off", "on", "busy", "on_1worker")
TARGET = 0.97
DEVICE = "bench-device"
SPOOL_MAX_BYTES = 2 * 10**9

_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _take(self):
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                return
            n -= len(chunk)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST = _take

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextmanager
def upload_server() -> Iterator[str]:
    """A loopback HTTP server in its own process that reads each body and answers 201; yields
    a PUT URL template for ``HttpTarget``."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"the loopback upload server did not start (said {line!r})")
        yield f"http://127.0.0.1:{line}/frames/{{device}}/{{sha256}}.jpg"
    finally:
        stop_process(proc, timeout=5)


def _policy(variant: str) -> Any:
    from monitoring.sampler import Strategy
    from monitoring.sampling_policy import SamplingPolicy

    if variant == "busy":
        return SamplingPolicy(strategies=(Strategy(name="all", kind="random", share=1.0),), dedup_bits=0)
    return SamplingPolicy()


class _Parts:
    """The sinks and services of one variant (none for ``off``)."""

    def __init__(self, variant: str, folder: Path, url: str, seed: int) -> None:
        from benchmarks.monitoring import _monitor
        from monitoring.collector import Collector
        from monitoring.spool import Spool
        from monitoring.upload_target import HttpTarget
        from monitoring.uploader import Uploader

        self.variant = variant
        self.monitor: Any = None
        self.collector: Collector | None = None
        self.uploader: Uploader | None = None
        self.spool: Spool | None = None
        if variant == "off":
            return
        if variant in ("on", "on_1worker"):
            self.monitor = _monitor(folder, "on")
        self.spool = Spool(
            folder / f"spool-{variant}-{time.monotonic_ns()}", max_bytes=SPOOL_MAX_BYTES, max_items=100_000
        )
        workers = 1 if variant == "on_1worker" else 2  # 2: the [upload] concurrency default
        self.uploader = Uploader(self.spool, HttpTarget(url), device=DEVICE, concurrency=workers).start()
        self.collector = Collector(
            _policy(variant),
            self.spool,
            device=DEVICE,
            rng=np.random.default_rng(seed),
            lossless=variant != "busy",  # a file source, as the daemon sets it; busy drops instead
            on_spooled=self.uploader.wake,
        ).start()

    @property
    def sinks(self) -> list[Any]:
        return [s for s in (self.monitor, self.collector) if s is not None]

    def finish(self) -> dict[str, Any]:
        """Drain everything (the collector, then the uploads), stop, and give the counts."""
        out: dict[str, Any] = {"kept": 0, "duplicates": 0, "queue_dropped": 0, "uploaded": 0}
        try:
            if self.collector is not None and not self.collector.drain(120):
                raise RuntimeError(f"the collector ({self.variant}) did not catch up within 120 s")
            if self.uploader is not None and not self.uploader.drain(120):
                raise RuntimeError(f"the uploader ({self.variant}) did not empty the spool within 120 s")
            if self.monitor is not None and not self.monitor.drain(60):
                raise RuntimeError(f"the drift monitor ({self.variant}) did not catch up within 60 s")
        finally:
            if self.collector is not None:
                self.collector.stop()
                c = self.collector
                out.update(
                    kept=c.kept, duplicates=c.duplicates, queue_dropped=c.queue_dropped, frames=c.frames
                )
            if self.uploader is not None:
                self.uploader.stop()
                self.uploader.target.close()
                out["uploaded"] = self.uploader.uploaded
                out["upload_failures"] = sum(self.uploader.failures.values())
            if self.spool is not None:
                out["pending"] = self.spool.status()["pending"]
                self.spool.close()
            if self.monitor is not None:
                self.monitor.stop()
                if self.monitor.store is not None:
                    self.monitor.store.close()
        return out


def _round(
    model: Any, video: str, frames: int, order: list[str], folder: Path, url: str, r: int
) -> dict[str, Any]:
    from agent.bench_pipeline import pipeline_fps

    out: dict[str, Any] = {}
    for variant in order:
        parts = _Parts(variant, folder, url, seed=r)
        try:
            res = pipeline_fps(model, video, frames, sinks=parts.sinks)
        finally:
            counts = parts.finish()
        out[variant] = {"fps": round(res["fps"], 2), **counts}
    for variant in order:
        if variant != "off":
            out[variant]["ratio"] = round(out[variant]["fps"] / out["off"]["fps"], 4)
    return out


def _us(fn: Any, runs: int) -> dict[str, float]:
    for _ in range(min(200, runs)):
        fn()
    times = np.empty(runs, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(runs):
        t0 = clock()
        fn()
        times[i] = (clock() - t0) / 1000.0
    return {
        "median_us": round(float(np.median(times)), 2),
        "p95_us": round(float(np.percentile(times, 95)), 2),
    }


def selection_cost(runs: int, folder: Path) -> dict[str, Any]:
    """µs per frame on the results thread: ``Collector.write`` (not taken) and ``Sampler.select``."""
    from agent.source import Frame
    from inference.result import ClassScore, Detection, Result
    from monitoring.collector import Collector
    from monitoring.sampler import Sampler, Strategy
    from monitoring.sampling_policy import DEFAULT_STRATEGIES, SamplingPolicy
    from monitoring.spool import Spool

    rng = np.random.default_rng(3)
    dets = [Detection("face", float(s), (10.0 * i, 20.0, 10.0 * i + 40, 80.0)) for i, s in
            enumerate((0.92, 0.85, 0.81, 0.77, 0.7))]  # fmt: skip
    detector = Result(kind="detections", confidence=0.92, detections=dets)
    scores = rng.dirichlet(np.full(1000, 0.05))
    scores[0] = 0.0
    scores = scores / scores.sum() * 0.1
    scores[0] = 0.9  # a confident answer: margin far above the band
    classifier = Result(
        kind="classes",
        confidence=0.9,
        classes=[ClassScore(f"class{i}", float(s)) for i, s in enumerate(scores)],
    )
    margin = (
        Strategy(name="unsure", kind="uncertain", measure="margin", low=0.0, high=0.1, per_minute=10),
        DEFAULT_STRATEGIES[1],
    )
    frame = Frame(0, time.time(), np.zeros((480, 640, 3), dtype=np.uint8))
    out: dict[str, Any] = {}
    with Spool(folder / "spool-select", max_bytes=10**8, max_items=1000) as spool:
        for name, result, strategies in (
            ("detector_5_boxes", detector, DEFAULT_STRATEGIES),
            ("classifier_1000_classes_margin", classifier, margin),
        ):
            sampler = Sampler(strategies, rng=np.random.default_rng(4))
            select = _us(partial(sampler.select, result), runs)
            collector = Collector(
                SamplingPolicy(strategies=strategies), spool, device=DEVICE, rng=np.random.default_rng(5)
            )  # not started: a frame taken (the 0.1 % audit, at most 10 an hour) waits or is dropped
            write = _us(partial(collector.write, frame, result, None), runs)
            out[name] = {
                "sampler_select": select,
                "collector_write": write,
                "taken": sum(collector.sampler.taken.values()) + sum(sampler.taken.values()),
            }
    return out


def worker_cost(runs: int, folder: Path, url: str) -> dict[str, Any]:
    """ms per kept frame on the collector's worker (shrink, phash, JPEG, spool.put) and per upload."""
    import cv2

    from agent.bench_pipeline import read_frames
    from monitoring.collector import _shrink
    from monitoring.phash import phash64
    from monitoring.spool import Spool
    from monitoring.upload_target import HttpTarget

    policy = _policy("on")
    out: dict[str, Any] = {}
    meta = {"device": DEVICE, "strategy": "unsure", "scores": {"confidence": 0.42}}
    last: tuple[bytes, str] | None = None
    for size in ("640x480", "1920x1080"):
        images = read_frames(f"demo:faces:{size}@0", 8)
        stages: dict[str, list[float]] = {k: [] for k in ("shrink", "phash", "jpeg", "spool_put", "total")}
        sizes = []
        with Spool(folder / f"spool-worker-{size}", max_bytes=SPOOL_MAX_BYTES, max_items=100_000) as spool:
            for i in range(runs):
                image = images[i % len(images)].copy()
                image[:16, :16] = (i & 255, (i >> 8) & 255, 7)  # every JPEG its own bytes: a real put
                t0 = time.perf_counter()
                small, _ = _shrink(image, policy.max_side)
                t1 = time.perf_counter()
                phash64(small)
                t2 = time.perf_counter()
                ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, policy.jpeg_quality])
                t3 = time.perf_counter()
                item = spool.put(buf.tobytes(), meta)
                t4 = time.perf_counter()
                assert ok and item is not None
                spans = {"shrink": (t0, t1), "phash": (t1, t2), "jpeg": (t2, t3), "spool_put": (t3, t4)}
                for k, (a, b) in {**spans, "total": (t0, t4)}.items():
                    stages[k].append((b - a) * 1000)
                sizes.append(len(buf))
                last = (buf.tobytes(), item.sha256)
            if spool.status()["items"] != runs:
                raise RuntimeError(f"{size}: {runs} puts made {spool.status()['items']} spool items")
        out[size] = {f"{k}_ms": round(median(v), 3) for k, v in stages.items()}
        out[size]["jpeg_kb"] = round(median(sizes) / 1000, 1)
    assert last is not None
    jpeg, sha = last
    with HttpTarget(url) as target:
        target.put(sha, jpeg, meta, DEVICE, time.time())
        times = []
        for _ in range(max(10, runs // 2)):
            t0 = time.perf_counter()
            target.put(sha, jpeg, meta, DEVICE, time.time())
            times.append((time.perf_counter() - t0) * 1000)
    out["upload_ms"] = round(median(times), 3)
    out["upload_jpeg_kb"] = round(len(jpeg) / 1000, 1)
    return out


class _CountingSpool:
    """A ``Spool`` whose ``pending`` (the uploader's look at the queue) is counted."""

    def __init__(self, spool: Any) -> None:
        self._spool = spool
        self.pending_calls = 0

    def pending(self, limit: int = 100) -> Any:
        self.pending_calls += 1
        return self._spool.pending(limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spool, name)


def idle_uploader(folder: Path, url: str, workers: int, seconds: float) -> dict[str, float]:
    """What an uploader with nothing to do costs: spool queries and CPU time per second."""
    import resource
    import threading

    from monitoring.spool import Spool
    from monitoring.upload_target import HttpTarget
    from monitoring.uploader import Uploader

    with Spool(folder / f"spool-idle-{workers}", max_bytes=10**8, max_items=100) as spool:
        counting = _CountingSpool(spool)
        uploader = Uploader(counting, HttpTarget(url), device=DEVICE, concurrency=workers)  # type: ignore[arg-type]
        before = resource.getrusage(resource.RUSAGE_SELF)
        uploader.start()
        threading.Event().wait(seconds)  # the cost over a stretch of wall time is the figure
        uploader.stop()
        after = resource.getrusage(resource.RUSAGE_SELF)
        uploader.target.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "spool_queries_per_s": round(counting.pending_calls / seconds, 1),
        "cpu_s_per_s": round(cpu / seconds, 3),
    }


def run(quick: bool = False) -> dict[str, Any]:
    from agent.bench_pipeline import load, read_frames
    from benchmarks.monitoring import _bundle_with_reference
    from benchmarks.pipeline import write_video
    from inference import zoo

    frames = QUICK_FRAMES if quick else FRAMES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    variants = list(VARIANTS)
    per_round: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-collection-") as tmp, upload_server() as url:
        folder = Path(tmp)
        video = str(write_video(DEMO, frames, folder / "faces.avi"))
        model = load(_bundle_with_reference(zoo.bundle_dir(MODEL), folder, 100 if quick else 600), 1)
        try:
            for image in read_frames(video, 3):
                model.infer(image)
            for r in range(rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                per_round.append(_round(model, video, frames, order, folder, url, r))
        finally:
            model.close()
        selection = selection_cost(2000 if quick else 20000, folder)
        worker = worker_cost(20 if quick else 200, folder, url)
        idle = {f"{n}_workers": idle_uploader(folder, url, n, 0.5 if quick else 2.0) for n in (2, 1)}
    ratios = {v: [float(r[v]["ratio"]) for r in per_round] for v in variants[1:]}
    totals = {
        v: {
            k: sum(int(r[v][k]) for r in per_round)
            for k in ("kept", "duplicates", "queue_dropped", "uploaded")
        }
        for v in variants[1:]
    }
    out: dict[str, Any] = {
        "model": MODEL,
        "source": f"{frames} frames of {DEMO}, MJPEG",
        "upload_server": "loopback HTTP/1.1, its own process: reads each body, answers 201, stores nothing",
        "rounds": per_round,
        "rounds_count": rounds,
        "frames": frames,
        "ratio": round(median(ratios["on"]), 4),
        "ratio_range": [round(min(ratios["on"]), 4), round(max(ratios["on"]), 4)],
        "ratio_busy": round(median(ratios["busy"]), 4),
        "ratio_busy_range": [round(min(ratios["busy"]), 4), round(max(ratios["busy"]), 4)],
        "ratio_on_1worker": round(median(ratios["on_1worker"]), 4),
        "ratio_on_1worker_range": [round(min(ratios["on_1worker"]), 4), round(max(ratios["on_1worker"]), 4)],
        "idle_uploader": idle,
        "median_fps_off": round(median([r["off"]["fps"] for r in per_round]), 2),
        "totals": totals,
        "selection": selection,
        "worker": worker,
    }
    out["targets"] = [
        {
            "what": "pipeline throughput, drift monitoring + frame collection (default policy, spool, "
            "uploads to loopback HTTP) on ÷ off (blazeface; median of paired rounds)",
            "value": out["ratio"],
            "target": f"≥ {TARGET}",
            "ok": out["ratio"] >= TARGET,
        },
        {
            "what": "the same with one upload worker instead of two (a diagnostic, see idle_uploader)",
            "value": out["ratio_on_1worker"],
            "target": f"≥ {TARGET}",
            "ok": out["ratio_on_1worker"] >= TARGET,
        },
        {
            "what": "(worst case) the same with every frame taken, the worker's queue full and dropping",
            "value": out["ratio_busy"],
            "target": "-",
            "ok": None,
        },
    ]
    det, cls = selection["detector_5_boxes"], selection["classifier_1000_classes_margin"]
    w480, w1080 = worker["640x480"], worker["1920x1080"]
    out["notes"] = [
        f"on ÷ off {out['ratio']:.3f} (range {out['ratio_range'][0]:.3f}-{out['ratio_range'][1]:.3f} over "
        f"{rounds} rounds of {frames} frames at ~{out['median_fps_off']:.0f} frames/s); busy ÷ off "
        f"{out['ratio_busy']:.3f} (range {out['ratio_busy_range'][0]:.3f}-{out['ratio_busy_range'][1]:.3f}); "
        f"on with one upload worker {out['ratio_on_1worker']:.3f} (range "
        f"{out['ratio_on_1worker_range'][0]:.3f}-{out['ratio_on_1worker_range'][1]:.3f})",
        f"an idle uploader with an empty spool, per second: {_idle(idle, 2)}; {_idle(idle, 1)}",
        f"kept/duplicates/queue_dropped/uploaded over all rounds: on {_counts(totals['on'])}; "
        f"busy {_counts(totals['busy'])}; on_1worker {_counts(totals['on_1worker'])}",
        f"results thread, a frame not taken: Collector.write {det['collector_write']['median_us']:.1f} µs, "
        f"Sampler.select {det['sampler_select']['median_us']:.1f} µs (detector, 5 boxes); "
        f"{cls['collector_write']['median_us']:.1f} / {cls['sampler_select']['median_us']:.1f} µs "
        "(1000 classes, margin)",
        f"worker per kept frame: {w480['total_ms']:.1f} ms at 640x480 (JPEG {w480['jpeg_ms']:.1f}, spool.put "
        f"{w480['spool_put_ms']:.1f}), {w1080['total_ms']:.1f} ms at 1920x1080 "
        f"(shrink {w1080['shrink_ms']:.1f}, JPEG {w1080['jpeg_ms']:.1f}, "
        f"spool.put {w1080['spool_put_ms']:.1f}); one upload (two PUTs) "
        f"{worker['upload_ms']:.1f} ms on loopback",
    ]
    return out


def _idle(idle: dict[str, Any], n: int) -> str:
    d = idle[f"{n}_workers"]
    return f"{n} worker(s) {d['spool_queries_per_s']:.0f} spool queries, {d['cpu_s_per_s']:.2f} CPU s"


def _counts(t: dict[str, int]) -> str:
    return f"{t['kept']}/{t['duplicates']}/{t['queue_dropped']}/{t['uploaded']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.collection", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="fewer frames, rounds and calls")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON result")
    args = ap.parse_args(argv)
    result = run(args.quick)
    path = write_json(args.out / f"collection-{result_stem()}.json", result)
    for t in result["targets"]:
        print(f"{t['what']}: {t['value']:.3f} (target {t['target']})", file=sys.stderr)
    for note in result["notes"]:
        print(note, file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``Pipeline``: capture thread → bounded queue → inference loop (calling thread) → results thread → sinks.

- The capture thread reads the source (wrapped in ``Reconnecting``: a dead stream is
  reopened with back-off, never a crash), stamps each image as ``Frame(index, ts, image)``
  and queues it. Live sources use a one-slot queue where the latest frame wins and every
  replaced frame is counted in ``dropped``; lossless sources (files, folders, synthetic)
  block on a small queue, so no index is ever skipped. For a ``LoadedModel`` it also
  preprocesses the frame for the model serving at that moment (with its own
  ``Preprocessor``), so preprocessing overlaps the runtime.
- The inference loop reads ``handle.current`` ONCE per frame and uses that model for the
  whole frame, so a swap (an assignment on the handle) always falls between two frames.
  It runs the runtime on the prepared input when that input was made for this very model,
  else the whole ``infer`` (the frames in flight across a swap). Nothing else happens on
  this thread, so the runtime is kept busy.
- The results thread decodes (``LoadedModel.decode``), writes every sink and keeps the
  counters, in frame order. A model that raises (in the runtime or the decoder) is counted
  in ``errors``, passed to the ``on_error`` hook (the model manager's probation) and logged
  (rate-limited); the loop goes on. A failing sink is counted in ``sink_errors``.
- ``heartbeat`` is the monotonic time the inference loop last proved alive: a frame run, or
  an idle wait for the next frame that timed out (``idle_tick``). A loop stuck inside a
  model stops the heartbeat, and the systemd watchdog (agent/notify.py) stops pinging; a
  stuck sink does too, once the results queue is full.
- ``request_stop()`` is safe in a signal handler: the frame being run is finished and its
  result written, the sinks are flushed, ``run`` returns. ``call_between_frames(fn)`` runs
  ``fn`` on the inference thread between two frames (model swaps);
  ``call_between_results(fn)`` runs it on the results thread between two results (sink
  changes, config reloads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.handle import ModelHandle
from agent.sinks import Sink, SinkClosed
from agent.source import Backoff, Frame, Reconnecting, Source
from inference.result import Result

log = logging.getLogger(__name__)

Clock = Callable[[], float]

LOSSLESS_QUEUE = 4  # frames decoded ahead of inference on lossless sources
RESULTS_QUEUE = 4  # frames run but not yet decoded and written
LATENCY_WINDOW = 512  # frames kept for the latency percentiles
FPS_WINDOW_S = 5.0  # seconds over which fps is measured


def _count(result: Result | None) -> int:
    if result is None:
        return 0
    return len(result.detections) if result.kind == "detections" else len(result.classes)


def _top(result: Result | None) -> str:
    if result is None:
        return ""
    if result.kind == "detections" and result.detections:
        d = max(result.detections, key=lambda d: d.score)
        return f"{d.label} {d.score:.2f} [{','.join(str(round(v)) for v in d.box)}]"
    if result.kind == "classes" and result.classes:
        return f"{result.classes[0].label} {result.classes[0].score:.2f}"
    return ""


class RateLimitedLog:
    """Logs the first message at once, then at most one summary every ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += f" ({self._suppressed} more like this in the last {self._interval:.0f} s)"
            self._suppressed = 0
        self._next = now + self._interval
        self._log.log(level, msg, *args, exc_info=exc_info)


_EMPTY = object()
_END = object()


class FrameQueue:
    """A bounded hand-off queue between two threads: ``put_latest`` (live: drops the oldest)
    or ``put`` (blocking). Items are frames or the pipeline's in-flight tuples."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._low = maxsize // 2  # a waiting producer is woken when the queue drains to this
        self._items: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._producer_waiting = False

    def put_latest(self, frame: Any) -> int:
        """Queue ``frame``, dropping the oldest frames to make room; returns how many were dropped."""
        with self._cond:
            dropped = 0
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped += 1
            self._items.append(frame)
            self._cond.notify_all()
            return dropped

    def put(self, frame: Any) -> bool:
        """Queue ``frame``, waiting for room; ``False`` if the queue was closed meanwhile."""
        with self._cond:
            while len(self._items) >= self.maxsize and not self._closed:
                self._producer_waiting = True
                self._cond.wait(0.5)
                self._producer_waiting = False
            if self._closed:
                return False
            self._items.append(frame)
            if len(self._items) == 1:
                self._cond.notify()  # the consumer may be waiting on an empty queue
            return True

    def get(self, timeout: float) -> Any:
        """A ``Frame``, or ``_END`` once closed and empty, or ``_EMPTY`` after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                frame = self._items.popleft()
                if self._producer_waiting and len(self._items) <= self._low:
                    self._cond.notify()  # refill in bursts: fewer thread switches per frame
                return frame
            return _END if self._closed else _EMPTY

    def close(self) -> None:
        """No more frames: ``get`` drains what is queued, then returns ``_END``; producers stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the counters (``Pipeline.stats()``)."""

    model: str
    version: int
    frames: int  # frames with a result
    errors: int  # frames whose inference raised
    dropped: int  # frames replaced in the live queue before inference
    captured: int  # images read from the source
    sink_errors: int
    reconnects: int  # times the source was reopened after dying
    fps: float  # results per second over the last few seconds
    latency_p50_ms: float
    latency_p95_ms: float
    detections: int  # detections (or classes) in the latest result
    uptime_s: float
    source_ok: bool
    source_status: str
    top: str = ""  # the latest result's best answer, e.g. "face 0.93 [287,126,439,278]"
    queue_p95_ms: float = 0.0  # p95 of the time results waited (queues, sinks), outside the model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """See the module docstring. ``source`` must already be open (``open`` errors are the caller's).

    ``prepare=False`` keeps all of a frame's work on the inference thread (``model.infer``).
    """

    def __init__(
        self,
        source: Source,
        handle: ModelHandle,
        sinks: Sequence[Sink] = (),
        *,
        max_frames: int | None = None,
        idle_tick: float = 0.5,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sleep: Callable[[float], object] | None = None,
        prepare: bool = True,
    ) -> None:
        self.handle = handle
        self.sinks: list[Sink] = list(sinks)
        self.max_frames = max_frames
        self.idle_tick = idle_tick
        self.live = source.live
        self.prepare = prepare
        self._clock = clock
        self._wall = wall
        self._stop = threading.Event()
        self._stopping = False
        self.source_status = "ok"
        self.source = Reconnecting(
            source,
            backoff=backoff,
            sleep=sleep or self._stop.wait,
            clock=clock,
            stopped=self._stop.is_set,
            on_status=self._on_source_status,
        )
        self.queue = FrameQueue(1 if source.live else LOSSLESS_QUEUE)
        self.results = FrameQueue(RESULTS_QUEUE)
        self._calls: deque[Callable[[], object]] = deque()
        self._result_calls: deque[Callable[[], object]] = deque()
        self._thread: threading.Thread | None = None
        self._results_thread: threading.Thread | None = None
        self._pre: tuple[Any, Any] | None = None  # (model, its Preprocessor) of the capture thread
        self.capture_error: BaseException | None = None
        self.results_error: BaseException | None = None
        # counters: written by one thread each, read by anyone
        self.frames = 0  # results written (results thread)
        self.errors = 0  # frames whose model raised (results thread)
        self.processed = 0  # frames run (inference thread)
        self.prepared = 0  # frames run on an input preprocessed by the capture thread
        self.dropped = 0  # capture thread
        self.captured = 0
        self.sink_errors = 0
        self.last_result: Result | None = None  # read by stats(): the display shows the top answer
        self.started = clock()
        self.heartbeat = clock()
        self._latency = [0.0] * LATENCY_WINDOW
        self._waited = [0.0] * LATENCY_WINDOW  # end-to-end latency less the model's own time
        self._done: deque[float] = deque(maxlen=2048)
        # called on the results thread when a model raised on a frame (the ModelManager's probation)
        self.on_error: Callable[[Frame, Any, BaseException], None] | None = None
        self._error_log = RateLimitedLog(log, clock=clock)
        self._sink_log = RateLimitedLog(log, clock=clock)

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Finish the current frame and return from ``run``. Safe inside a signal handler."""
        self._stopping = True

    def stop(self) -> None:
        """Like ``request_stop``, and also interrupts a source back-off wait (not for signal handlers)."""
        self._stopping = True
        self._stop.set()
        self.queue.close()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def call_between_frames(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the inference thread before the next frame (thread- and signal-safe)."""
        self._calls.append(fn)

    def call_between_results(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the results thread before the next result is written (thread- and
        signal-safe): the place to change ``sinks``."""
        self._result_calls.append(fn)

    def _on_source_status(self, text: str) -> None:
        self.source_status = text if text != "source reopened" else "ok"

    # ------------------------------------------------------------------ capture thread

    def _prepare(self, image: Any) -> tuple[Any, Any, Any, float]:
        """Preprocess ``image`` for the model serving now: (model, input, transform, ms)."""
        model = self.handle.current
        if self._pre is None or self._pre[0] is not model:
            self._pre = None
            if not (hasattr(model, "run_prepared") and hasattr(model, "decode")):
                return None, None, None, 0.0  # not a LoadedModel: infer() does it all
            from inference.preprocess import Preprocessor

            self._pre = (model, Preprocessor(model.spec, model.runtime.inputs[0]))
        t0 = self._clock()
        x, t = self._pre[1](image)
        return model, x, t, (self._clock() - t0) * 1000.0

    def _capture(self) -> None:
        index = 0
        queue, source, wall, live = self.queue, self.source, self._wall, self.live
        try:
            while not self._stop.is_set():
                image = source.read()
                if image is None:
                    break
                frame = Frame(index, wall(), image)
                index += 1
                self.captured = index
                model = x = t = None
                pre_ms = 0.0
                if self.prepare:
                    try:
                        model, x, t, pre_ms = self._prepare(image)
                    except Exception:  # the inference thread's infer() reports it
                        model = None
                item = (frame, model, x, t, pre_ms)
                if live:
                    self.dropped += queue.put_latest(item)
                elif not queue.put(item):
                    break
        except BaseException as err:  # a bug in a source: end the run, the caller reports it
            self.capture_error = err
            log.exception("capture from %s failed", self.source.spec)
        finally:
            queue.close()

    # ------------------------------------------------------------------ inference loop

    def _run_calls(self, calls: deque[Callable[[], object]]) -> None:
        while calls:
            fn = calls.popleft()
            try:
                fn()
            except Exception:
                log.exception("call %r between frames failed", fn)

    def run(self) -> PipelineStats:
        """Serve frames until the source ends, ``max_frames`` is reached or a stop is requested."""
        self.started = self.heartbeat = self._clock()
        self._results_thread = threading.Thread(target=self._write_results, name="results", daemon=True)
        self._results_thread.start()
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        self._thread.start()
        handle, queue, results, clock, calls = self.handle, self.queue, self.results, self._clock, self._calls
        try:
            while not self._stopping:
                if calls:
                    self._run_calls(calls)
                item = queue.get(self.idle_tick)
                if item is _EMPTY:
                    self.heartbeat = clock()
                    continue
                if item is _END:
                    break
                frame, prepared_for, x, t, pre_ms = item
                model = handle.current  # read once: this model serves this whole frame
                t0 = clock()
                try:
                    if prepared_for is model:
                        raw = model.run_prepared(x)
                        out: tuple[Any, ...] = ("raw", frame, model, raw, t, pre_ms, t0, clock())
                        self.prepared += 1
                    else:
                        out = ("result", frame, model, model.infer(frame.image), None, 0.0, t0, 0.0)
                except Exception as err:
                    out = ("error", frame, model, err, None, 0.0, t0, 0.0)
                self.heartbeat = clock()
                self.processed += 1
                if not results.put(out):
                    break  # the results thread ended
                if self.max_frames is not None and self.processed >= self.max_frames:
                    break
        finally:
            self._finish()
        return self.stats()

    # ------------------------------------------------------------------ results thread

    def _write_results(self) -> None:
        results, clock, calls = self.results, self._clock, self._result_calls
        latency, waited, done = self._latency, self._waited, self._done
        try:
            while True:
                if calls:
                    self._run_calls(calls)
                item = results.get(0.5)
                if item is _EMPTY:
                    continue
                if item is _END:
                    break
                kind, frame, model, value, t, pre_ms, t0, t_run = item
                if kind == "raw":
                    t_dec = clock()
                    try:
                        result = model.decode(value, t)
                    except Exception as err:
                        self._failed(frame, model, err)
                        continue
                    now = clock()
                    # end to end includes the wait in the results queue; the model's own time
                    # (preprocess + run + decode) does not: probation judges the model by that
                    result.latency_ms = pre_ms + (now - t0) * 1000.0
                    result.inference_ms = pre_ms + (t_run - t0 + now - t_dec) * 1000.0
                elif kind == "result":
                    result = value
                    now = clock()
                    if not result.inference_ms:
                        result.inference_ms = result.latency_ms or (now - t0) * 1000.0
                    result.latency_ms = max((now - t0) * 1000.0, result.inference_ms)
                else:
                    self._failed(frame, model, value)
                    continue
                for sink in self.sinks:
                    try:
                        sink.write(frame, result, model)
                    except SinkClosed as err:
                        log.info("%s; stopping", err)
                        self._stopping = True
                    except Exception as err:
                        self.sink_errors += 1
                        self._sink_log(logging.WARNING, "sink %s failed: %s", type(sink).__name__, err)
                latency[self.frames % LATENCY_WINDOW] = result.latency_ms
                waited[self.frames % LATENCY_WINDOW] = result.latency_ms - result.inference_ms
                self.frames += 1
                self.last_result = result
                done.append(now)
        except BaseException as err:  # a bug here must end the run, not hang it
            self.results_error = err
            self._stopping = True
            log.exception("writing results failed")
        finally:
            results.close()
            if calls:
                self._run_calls(calls)

    def _failed(self, frame: Frame, model: Any, err: BaseException) -> None:
        self.errors += 1
        if self.on_error is not None:
            try:
                self.on_error(frame, model, err)
            except Exception:
                log.exception("the on_error hook failed")
        self._error_log(
            logging.ERROR, "%s v%s failed on frame %d: %r", model.name, model.version, frame.index, err
        )

    def _finish(self) -> None:
        self._stopping = True
        self._stop.set()
        self.queue.close()
        self.queue.clear()
        self.results.close()  # the results thread writes what is queued, then ends
        if self._calls:
            self._run_calls(self._calls)
        if self._results_thread is not None:
            self._results_thread.join(timeout=30.0)
            if self._results_thread.is_alive():
                log.warning("writing results did not finish within 30 s (a sink is stuck?)")
        for sink in self.sinks:
            try:
                sink.flush()
            except Exception as err:
                self.sink_errors += 1
                log.warning("flushing sink %s failed: %s", type(sink).__name__, err)
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("capture from %s did not stop within 5 s; leaving it open", self.source.spec)
                return
        try:
            self.source.close()
        except Exception as err:
            log.warning("closing %s failed: %s", self.source.spec, err)

    # ------------------------------------------------------------------ counters

    def fps(self, now: float | None = None) -> float:
        """Results per second over the last ``FPS_WINDOW_S`` seconds (0 when idle)."""
        now = self._clock() if now is None else now
        done = list(self._done)
        recent = [t for t in done if now - t <= FPS_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def latency_percentiles(self, window: list[float] | None = None) -> tuple[float, float]:
        n = min(self.frames, LATENCY_WINDOW)
        if n == 0:
            return 0.0, 0.0
        values = sorted((self._latency if window is None else window)[:n])
        return values[int(0.5 * (n - 1))], values[round(0.95 * (n - 1))]

    def stats(self) -> PipelineStats:
        model = self.handle.current
        p50, p95 = self.latency_percentiles()
        _, wait95 = self.latency_percentiles(self._waited)
        now = self._clock()
        return PipelineStats(
            model=model.name,
            version=model.version,
            frames=self.frames,
            errors=self.errors,
            dropped=self.dropped,
            captured=self.captured,
            sink_errors=self.sink_errors,
            reconnects=self.source.reconnects,
            fps=round(self.fps(now), 2),
            latency_p50_ms=round(p50, 3),
            latency_p95_ms=round(p95, 3),
            queue_p95_ms=round(wait95, 3),
            detections=_count(self.last_result),
            top=_top(self.last_result),
            uptime_s=round(now - self.started, 3),
            source_ok=self.source.down_since is None,
            source_status=self.source_status,
        )

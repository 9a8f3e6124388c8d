"""``DriftMonitor``: FrameStats → Window → DriftDetector → MetricsStore and listeners, off the hot path.

It is a pipeline sink. ``write`` runs on the results thread for every frame and does O(1)
work: it counts the frame and its latency, and every ``sample_every`` (default 1 s; camera
frames are not independent) it hands the frame, its result and the model to the monitor's
own thread through a bounded queue. A full queue drops the sample and counts it: the camera
loop never waits for monitoring.

The monitor thread computes the frame's statistics (``FrameStats``: on a thumbnail), fills
the tumbling ``Window`` (N samples or T seconds), and at each window's end judges it with the
model version's ``DriftDetector``, writes the window, its scores and any alert to
``metrics.db``, saves the detector's state (so a restart resumes it), and tells the
listeners (the fleet channel's telemetry and alerts).

The reference profile of a version comes from its manifest (``reference``, built by
``edge-agent bundle create --reference``). A version without one, or with one that is
malformed or does not fit the model, learns one from its first ``learn`` samples of live
data (saved as it goes, so a restart does not start over); every window, telemetry message
and alert says which (``bundle``, ``learned``, or ``learning`` until it is ready). A model
swap closes the window and starts afresh against the new version's reference.

A database that cannot be written (full or read-only disk) never stops the camera loop nor
the monitor: what was not written is counted (``store_failures``) and logged, rate-limited.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inference.errors import ConfigError, EdgeAgentError
from inference.result import Result
from monitoring.drift import Alert, DriftDetector, Verdict
from monitoring.frame_stats import FrameStats, Sample
from monitoring.metrics_store import MetricsStore
from monitoring.prometheus import LatencyHistogram
from monitoring.reference import (
    WINDOW_SIZES,
    ReferenceError,
    ReferenceProfile,
    build_reference,
    parse_reference,
)
from monitoring.window import Window, WindowSummary

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0}
PER_FRAME = ("off", "sampled", "all")
LEARN_CHECKPOINT_S = 300.0  # how often learning samples are saved (a restart resumes from there)
MAX_LEARN_SAMPLES = 20_000
MIN_LEARN_SAMPLES = 300  # a time-based learn needs at least these samples (with a count: at least 60)
MAX_LEARN_GAP_S = 5.0  # a gap between two samples counts this much learning time at most
MAX_UNSENT = 256  # alerts kept for a listener that could not take them
RETRY_UNSENT_S = 15.0  # between two idle retries of alerts a listener could not take
MAX_PENDING = 65536  # frames counted between two samples; more are left out of fps (counted)


@dataclass(frozen=True)
class Span:
    """A count of frames/samples (``"60"``) or a time (``"30s"``, ``"5m"``, ``"1h"``)."""

    count: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | int, where: str) -> Span:
        if isinstance(text, bool):
            raise ConfigError(f"{where}: {text!r} is not a count (60) nor a time (30s, 5m, 1h)")
        m = _SPAN.match(str(text))
        if m is None:
            raise ConfigError(f"{where}: {text!r} is not a count (60) nor a time (30s, 5m, 1h)")
        number, unit = float(m.group(1)), m.group(2)
        if unit is None:
            if number != int(number) or number < 1:
                raise ConfigError(f"{where}: {text!r}: a count must be a whole number ≥ 1")
            return cls(count=int(number))
        seconds = number * _UNIT_S[unit]
        if not 0 < seconds <= 7 * 86400:
            raise ConfigError(f"{where}: {text!r}: a time must be over 0 and at most 7 days")
        return cls(seconds=seconds)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.seconds:g}s"


@dataclass(frozen=True)
class MonitorSettings:
    """``[monitoring]`` as the monitor uses it (``agent.config.MonitoringConfig`` parses it)."""

    sample_every: Span = field(default_factory=lambda: Span(seconds=1.0))
    window: Span = field(default_factory=lambda: Span(count=60))  # samples, or a time
    alert_after: int = 3  # K: consecutive drifted windows before an alert
    clear_after: int = 3  # consecutive calm windows before it clears
    learn: Span = field(default_factory=lambda: Span(count=3600))  # samples (or a time) to learn from
    per_frame: str = "off"  # off | sampled (the drift samples' result rows) | all (the agent's SqliteSink)
    queue: int = 16  # samples waiting for the monitor thread; more are dropped and counted


@dataclass(frozen=True)
class WindowReport:
    """One finished window, as the listeners get it: ``verdict`` is None while learning."""

    model: str
    version: int
    reference: str  # bundle | learned | learning
    summary: WindowSummary
    verdict: Verdict | None


class ModelLike(Protocol):
    name: str
    version: int
    sha256: str


def _key(model: ModelLike) -> str:
    return f"{model.name}/v{model.version}/{model.sha256[:12]}"


def _labels(model: Any) -> list[str]:
    bundle = getattr(model, "bundle", None)
    return list(bundle.labels()) if bundle is not None else []


def _manifest_reference(model: Any) -> Any:
    bundle = getattr(model, "bundle", None)
    return None if bundle is None else bundle.manifest.reference


def _sample_to_json(s: Sample) -> list[Any]:
    return [
        round(s.ts, 3),
        s.frame,
        {k: round(v, 6) for k, v in s.values.items()},
        [list(x) for x in s.labels],
        s.latency_ms,
    ]


def _sample_from_json(row: Any) -> Sample:
    ts, frame, values, labels, latency = row
    return Sample(
        ts=float(ts),
        frame=int(frame),
        values={str(k): float(v) for k, v in values.items()},
        labels=tuple((str(a), float(b)) for a, b in labels),
        latency_ms=float(latency),
    )


class _Version:
    """The monitor's view of one model version: its reference (or what it learns from) and detector."""

    def __init__(self, model: Any, key: str) -> None:
        self.model = model
        self.key = key
        self.name: str = model.name
        self.version: int = model.version
        self.reference: ReferenceProfile | None = None
        self.detector: DriftDetector | None = None
        self.learning: list[Sample] = []
        self.learned_s = 0.0  # seconds of live data learned from
        self.retry_at = 0  # learning samples before the next try at building the reference
        self.reference_saved = True  # False while a learned reference waits to be saved
        self.saved_learning_at = 0.0

    @property
    def origin(self) -> str:
        return "learning" if self.reference is None else self.reference.origin


class DriftMonitor:
    """See the module docstring. A pipeline sink (``write``) and a service (``start``/``stop``)."""

    def __init__(
        self,
        store: MetricsStore | None,
        settings: MonitorSettings | None = None,
        *,
        clock: Clock = time.time,
        frame_stats: FrameStats | None = None,
        rng: np.random.Generator | None = None,
        lossless: bool = False,
    ) -> None:
        """``lossless``: the source is a file or folder (``not source.live``): the sink waits for
        room instead of dropping a sample, so a run over the same files gives the same windows."""
        self.store = store
        self.lossless = lossless
        self.settings = settings or MonitorSettings()
        self.clock = clock
        self.frame_stats = frame_stats or FrameStats()
        self.rng = rng
        self.latency = LatencyHistogram()
        self.on_window: list[Callable[[WindowReport], None]] = []
        self.on_alert: list[Callable[[Alert], None]] = []
        # the ids of frames collected between two times (issue 10's sampler), for alerts' evidence
        self.collected_frames: Callable[[float, float], Sequence[str]] | None = None
        # counters (results thread: frames; monitor thread: the rest)
        self.frames = 0
        self.samples = 0
        self.samples_dropped = 0
        self.windows = 0
        self.store_failures = 0
        self.store_failed: dict[str, int] = {}  # what could not be written, by kind
        self.listener_failures = 0
        self.frames_uncounted = 0  # frames left out of a window's fps and latency (MAX_PENDING)
        self.alerts_lost = 0  # alerts no listener could take before MAX_UNSENT or the stop
        self.failures = 0  # samples the monitor itself failed on (a bug: logged with its traceback)
        self.alerts_raised = 0
        # results thread → monitor thread
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[Any, ...]] = deque()
        self._pending: list[tuple[float, float]] = []  # (latency ms, ts) of frames not yet handed over
        self._next_sample = -math.inf
        self._since_sample = 0
        self._model_key: tuple[str, int, str] | None = None
        # monitor thread
        self._current: _Version | None = None
        self._window: Window | None = None
        self._window_index = 0
        self.last: WindowReport | None = None
        self.active: dict[tuple[str, str], Alert] = {}  # replaced, never changed in place
        self._unsent: list[tuple[Callable[[Any], None], Alert]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._fail_log_at = -math.inf
        self._bug_log_at = -math.inf
        self._refused_log_at = -math.inf
        self._retry_at = -math.inf  # monotonic: the next idle retry of unsent alerts

    # ------------------------------------------------------------------ results thread (a sink)

    def write(self, frame: Any, result: Result, model: Any) -> None:
        """Count the frame; every ``sample_every``, hand its thumbnail to the monitor thread
        (never waits, unless the source is ``lossless``)."""
        self.frames += 1
        ms = result.inference_ms or result.latency_ms
        self.latency.observe_ms(ms)
        key = (model.name, model.version, model.sha256)
        every = self.settings.sample_every
        if every.count is not None:
            self._since_sample += 1
            due = self._since_sample >= every.count
        else:
            if frame.ts < self._next_sample - (every.seconds or 0.0):  # the wall clock stepped back
                self._next_sample = frame.ts
            due = frame.ts >= self._next_sample
        if due:
            self._since_sample = 0
            if every.seconds is not None:
                self._next_sample = frame.ts + every.seconds
        with self._cond:
            pending = self._pending
            if key != self._model_key:  # the frames so far were the old model's
                self._model_key = key
                self._queue.append(("model", model, pending, result.kind))
                pending = self._pending = []
                self._cond.notify_all()
            if len(pending) < MAX_PENDING:  # taken at least every second by the monitor thread
                pending.append((ms, frame.ts))
            else:
                self.frames_uncounted += 1
            if not due:
                return
            if self.lossless:  # a file or folder: every sample, the source waits (as the pipeline does)
                while len(self._queue) >= self.settings.queue and self._thread_alive():
                    self._cond.wait(0.5)
            if len(self._queue) >= self.settings.queue:
                self.samples_dropped += 1  # its frames stay pending: counted with the next sample
                return
        # a thumbnail, not the frame: the queue never holds full frames (16 at 1080p is 100 MB)
        thumb = self.frame_stats.thumbnail(frame.image)
        with self._cond:
            self._queue.append(("sample", frame.index, frame.ts, thumb, result, self._pending))
            self._pending = []
            self._cond.notify_all()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ service

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Process what is queued, save the state, end the thread (a partial window is dropped;
        a reference due to be learned is built at the next start instead)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # its state is saved by the thread itself when it ends
                log.warning("the drift monitor did not stop within %.0f s", timeout)
        else:
            self._save_state()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sample has been processed (tests, benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._queue or self._busy), timeout)

    _busy = False

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    if not self._cond.wait(1.0):
                        break
                if not self._queue and self._stopping:
                    break
                item = self._queue.popleft() if self._queue else None
                frames: list[tuple[float, float]] = []
                if item is None:  # idle for a second: take the frames counted meanwhile
                    frames, self._pending = self._pending, []
                self._busy = True
            try:
                if item is None:
                    self._count(frames)
                    self._maybe_close_by_time()
                    if self._unsent and time.monotonic() >= self._retry_at:
                        self._retry_at = time.monotonic() + RETRY_UNSENT_S
                        self._retry_unsent()
                elif item[0] == "model":
                    self._count(item[2])
                    self._switch(item[1], item[3])
                else:
                    _, index, ts, image, result, frames = item
                    self._on_sample(self.frame_stats.sample(index, ts, image, result), frames)
            except Exception:  # a bug in monitoring: logged whole; the camera loop and this thread go on
                self.failures += 1
                now = time.monotonic()
                if now - self._bug_log_at >= 60.0:
                    self._bug_log_at = now
                    log.exception("drift monitoring failed (%d so far); it goes on", self.failures)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self._save_state()  # on this thread: nothing else touches the detector now

    def _count(self, frames: list[tuple[float, float]]) -> None:
        """Every frame in the window's fps and latency (frames before the first sample are dropped)."""
        if self._window is not None:
            for ms, ts in frames:
                self._window.count_frame(ms, ts)

    # ------------------------------------------------------------------ monitor thread

    def _switch(self, model: Any, kind: str) -> None:
        """A new model serves (giving ``kind`` results): close the old version's window, start
        afresh against the new one's reference."""
        # alerts a listener has not taken yet go on to the new version (saved in its row, not the
        # old one's: a later rollback does not send them again)
        carried, self._unsent = self._unsent, []
        if self._current is not None:
            try:
                self._close_window()
                carried += self._unsent
                self._unsent = []
                self._save_state()
            except Exception:  # a bug: counted and logged; the new version is made current all the same
                self.failures += 1
                log.exception("drift monitoring: closing %s failed", self._current.key)
        # the new version is current before anything else can fail: its samples are never
        # judged as the old one's; the old version's alerts and last window end with it
        v = self._current = _Version(model, _key(model))
        self._window = None
        self.active = {}
        self.last = None
        saved = self._load(f"monitor:{v.key}") or {}
        self._window_index = saved["next"] if isinstance(saved.get("next"), int) else 0
        restored = self._unsent_from(saved.get("unsent"))
        self._unsent = (carried + restored)[:MAX_UNSENT]
        self.alerts_lost += max(0, len(carried) + len(restored) - MAX_UNSENT)
        raw = _manifest_reference(model)
        if raw is not None:
            try:
                v.reference = parse_reference(
                    raw, labels=_labels(model), kind=kind, where=f"{v.key} manifest reference"
                )
            except ReferenceError as err:
                log.warning("%s; learning a reference from live data instead", err)
        if v.reference is None:
            self._resume_learning(v, kind)
        if v.reference is not None:
            self._make_detector(v, saved.get("detector"))
            for note in v.reference.notes():
                log.warning("%s: the reference profile: %s", v.key, note)
        log.info(
            "drift monitoring %s v%s against %s",
            v.name,
            v.version,
            "its bundle's reference profile"
            if v.origin == "bundle"
            else "a reference learned from live data"
            if v.origin == "learned"
            else f"a reference it learns from its first {self.settings.learn} samples of live data",
        )
        self._write(
            "recording the model version",
            lambda s: s.add_model_version(
                ts=self.clock(), model=v.name, version=v.version, sha256=model.sha256, reference=v.origin
            ),
        )

    def _resume_learning(self, v: _Version, kind: str) -> None:
        learned = self._load(f"reference:{v.key}")
        if learned is not None:
            try:
                v.reference = parse_reference(
                    learned, labels=_labels(v.model), kind=kind, where=f"{v.key} learned reference"
                )
                return
            except ReferenceError as err:
                log.warning("%s; learning it again", err)
        saved = self._load(f"learning:{v.key}")
        if saved is not None:
            try:
                v.learning = [_sample_from_json(r) for r in saved.get("samples", [])][:MAX_LEARN_SAMPLES]
                v.learned_s = float(saved.get("learned_s") or 0.0)
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                log.warning("the saved learning samples of %s are unreadable (%s); starting over", v.key, err)
                v.learning, v.learned_s = [], 0.0

    def _make_detector(self, v: _Version, state: Any = None) -> None:
        assert v.reference is not None
        v.detector = DriftDetector(
            v.reference,
            model=v.name,
            version=v.version,
            k=self.settings.alert_after,
            clear_k=self.settings.clear_after,
            state=state,
        )
        if v.detector.state_note:  # a saved state that does not fit this reference: started afresh
            log.warning("%s: %s", v.key, v.detector.state_note)
        self.active = {(a.kind, a.metric): a for a in v.detector.active_alerts()}

    def _on_sample(self, sample: Sample, frames: list[tuple[float, float]]) -> None:
        v = self._current
        if v is None:
            return
        self.samples += 1
        if self._window is not None and sample.ts < self._window.start_ts:  # the clock stepped back
            log.warning("drift monitoring: the clock went back %.0f s; window %d is dropped",
                        self._window.start_ts - sample.ts, self._window.index)  # fmt: skip
            self._window = None
        if self._window is None:
            self._window = Window(self._window_index, sample.ts)
        self._count(frames)
        self._window.add(sample)
        if v.reference is None:
            self._learn(v, sample)
        w = self.settings.window
        if (w.count is not None and self._window.n >= w.count) or (
            w.seconds is not None and sample.ts - self._window.start_ts >= w.seconds
        ):
            self._close_window()
        if self.settings.per_frame == "sampled":
            self._write_sample_row(v, sample)

    def _maybe_close_by_time(self) -> None:
        w, window = self.settings.window, self._window
        if w.seconds is not None and window is not None and self.clock() - window.start_ts >= w.seconds:
            self._close_window()

    def _learn(self, v: _Version, sample: Sample) -> None:
        if v.learning:  # the time learned from: a gap (a restart, a dead camera) counts two samples' worth
            every = self.settings.sample_every.seconds or 0.0
            v.learned_s += min(max(0.0, sample.ts - v.learning[-1].ts), max(MAX_LEARN_GAP_S, 2 * every))
        if len(v.learning) < MAX_LEARN_SAMPLES:
            v.learning.append(sample)
        learn = self.settings.learn
        enough = (
            len(v.learning) >= learn.count
            if learn.count is not None
            else v.learned_s >= (learn.seconds or 0.0) and len(v.learning) >= MIN_LEARN_SAMPLES
        ) or len(v.learning) >= MAX_LEARN_SAMPLES
        if not enough or len(v.learning) < v.retry_at or self._stopping:
            return  # (when stopping, the samples are saved and the reference is built at the next start)
        try:
            v.reference = build_reference(v.learning, origin="learned", rng=self.rng)
        except ReferenceError as err:  # e.g. too few distinct values: learn a window more, then try again
            v.retry_at = len(v.learning) + WINDOW_SIZES[0]
            log.warning(
                "%s: no reference from %d samples yet (%s); still learning", v.key, len(v.learning), err
            )
            if len(v.learning) >= MAX_LEARN_SAMPLES:
                v.learning = v.learning[len(v.learning) // 2 :]
                v.retry_at = 0
            return
        log.info(
            "%s: reference learned from %d samples (%.0f s) of live data; drift is judged from now on",
            v.key,
            len(v.learning),
            v.learned_s,
        )
        for note in v.reference.notes():
            log.warning("%s: the learned reference profile: %s", v.key, note)
        v.reference_saved = False
        self._save_reference(v)
        self._make_detector(v)

    def _save_reference(self, v: _Version) -> None:
        """Save a learned reference, then clear its learning samples; until it is saved, the
        samples stay (in memory and on disk) and every window tries again."""
        reference = v.reference
        assert reference is not None
        if self.store is None:  # nowhere to keep it: it serves this run, learning starts again next
            v.reference_saved, v.learning = True, []
            return
        if self._write(
            "saving the learned reference", lambda s: s.save_state(f"reference:{v.key}", reference.to_json())
        ):
            v.reference_saved = True
            v.learning = []
            self._write(
                "clearing the learning samples", lambda s: s.save_state(f"learning:{v.key}", {"samples": []})
            )

    def _save_learning(self, v: _Version) -> None:
        v.saved_learning_at = self.clock()
        data = {"learned_s": v.learned_s, "samples": [_sample_to_json(s) for s in v.learning]}
        self._write("saving the learning samples", lambda s: s.save_state(f"learning:{v.key}", data))

    def _close_window(self) -> None:
        window, v = self._window, self._current
        self._window = None
        if window is None or v is None or window.n == 0:
            return
        self._window_index = window.index + 1
        summary = window.summary()
        verdict = v.detector.judge(window) if v.detector is not None else None
        report = WindowReport(v.name, v.version, v.origin, summary, verdict)
        self.windows += 1
        self.last = report
        alerts: list[Alert] = []
        if verdict is not None:  # what the detector decided is kept before anyone is told
            active = dict(self.active)  # copy on write: status and /metrics read it from other threads
            for alert in verdict.raised:
                alert = self._with_frames(alert)
                active[(alert.kind, alert.metric)] = alert
                self.alerts_raised += 1
                log.warning("%s", alert.message())
                alerts.append(alert)
            for alert in verdict.cleared:
                active.pop((alert.kind, alert.metric), None)
                log.info("%s", alert.message())
                alerts.append(alert)
            self.active = active
        # told first, then saved: a crash in between raises an alert again after the restart
        # (at least once) rather than never; an alert a listener cannot take is kept in the state
        self._retry_unsent()
        for alert in alerts:
            for tell in self.on_alert:
                self._deliver(tell, alert)
        self._save_state(checkpoint=False)
        self._store_window(report)
        for alert in alerts:
            self._store_alert(alert)
        for show in self.on_window:
            self._tell_one(show, report)

    def _deliver(self, fn: Callable[[Any], None], alert: Alert) -> None:
        """Hand ``alert`` to ``fn`` behind any it could not take yet (their order is kept)."""
        if any(f is fn for f, _ in self._unsent) or not self._tell_one(fn, alert):
            if len(self._unsent) >= MAX_UNSENT:
                self.alerts_lost += 1
                log.error(
                    "drift monitoring: %s lost: %d alerts already wait for %r",
                    alert.message(),
                    MAX_UNSENT,
                    fn,
                )
                return
            self._unsent.append((fn, alert))

    def _retry_unsent(self) -> None:
        """Alerts a listener could not take: once more, in order, until one is refused again."""
        if not self._unsent:
            return
        unsent, self._unsent = self._unsent, []
        refused: set[int] = set()
        for fn, alert in unsent:
            if id(fn) in refused or not self._tell_one(fn, alert):
                refused.add(id(fn))
                self._unsent.append((fn, alert))

    def _unsent_from(self, saved: Any) -> list[tuple[Callable[[Any], None], Alert]]:
        """The alerts a listener had not taken before the stop (listeners by their position)."""
        out: list[tuple[Callable[[Any], None], Alert]] = []
        for row in saved if isinstance(saved, list) else []:
            try:
                index, data = row
                out.append((self.on_alert[int(index)], Alert.from_json(data)))
            except (TypeError, ValueError, IndexError) as err:
                self.alerts_lost += 1
                log.warning("drift monitoring: a saved unsent alert is unreadable (%s); dropped", err)
        return out

    def _with_frames(self, alert: Alert) -> Alert:
        if self.collected_frames is None:
            return alert
        from dataclasses import replace

        try:
            ids = tuple(str(i) for i in self.collected_frames(alert.start_ts, alert.end_ts))[:256]
        except EdgeAgentError as err:
            log.warning("the frames collected for %s alert are unknown: %s", alert.metric, err)
            return alert
        except Exception:  # a bug in the collector: the alert goes out without its frames
            self.listener_failures += 1
            log.exception("the frames collected for %s alert are unknown", alert.metric)
            return alert
        return replace(alert, frames=ids)

    def _save_state(self, checkpoint: bool = True) -> None:
        """One row per version (``monitor:<key>``, one transaction): the detector's state, the
        next window number, the alerts a listener has not taken; the learning samples every
        ``LEARN_CHECKPOINT_S`` and at ``checkpoint``; a learned reference not saved yet."""
        v = self._current
        if v is None:
            return
        if v.reference is not None and not v.reference_saved:
            self._save_reference(v)
        if v.learning and (checkpoint or self.clock() - v.saved_learning_at >= LEARN_CHECKPOINT_S):
            self._save_learning(v)
        index = {id(fn): i for i, fn in enumerate(self.on_alert)}
        state = {
            "next": self._window_index,
            "detector": v.detector.state() if v.detector is not None else None,
            "unsent": [[index[id(fn)], a.to_json()] for fn, a in self._unsent if id(fn) in index],
        }
        self._write("saving the drift state", lambda s: s.save_state(f"monitor:{v.key}", state))

    # ------------------------------------------------------------------ writing

    def _store_window(self, report: WindowReport) -> None:
        s, verdict = report.summary, report.verdict
        row = {
            "model": report.model,
            "version": report.version,
            "reference": report.reference,
            "start_ts": s.start_ts,
            "end_ts": s.end_ts,
            "samples": s.samples,
            "frames": s.frames,
            "fps": s.fps,
            "latency_p50_ms": s.latency_p50_ms,
            "latency_p95_ms": s.latency_p95_ms,
            "confidence": s.means.get("confidence"),
            "drifted": int(bool(verdict and verdict.drifted)),
            "summary": s.to_json(),
        }
        scores = [
            {
                "metric": sc.metric,
                "score": sc.score,
                "value": sc.value,
                "threshold": sc.threshold,
                "drifted": int(sc.drifted),
            }
            for sc in (verdict.scores if verdict is not None else ())
        ]
        self._write("writing a window", lambda st: st.add_window(row, scores))

    def _store_alert(self, alert: Alert) -> None:
        row = {
            "ts": alert.end_ts,
            "kind": alert.kind,
            "metric": alert.metric,
            "state": alert.state,
            "model": alert.model,
            "version": alert.version,
            "score": alert.score,
            "value": alert.value,
            "threshold": alert.threshold,
            "detail": alert.to_json(),
        }
        self._write("writing an alert", lambda st: st.add_alert(row))

    def _write_sample_row(self, v: _Version, sample: Sample) -> None:
        top = max(sample.labels, key=lambda x: x[1])[0] if sample.labels else None
        n = sample.values.get("detections")
        row = (
            sample.frame,
            sample.ts,
            v.name,
            v.version,
            sample.latency_ms,
            sample.values.get("confidence", 0.0),
            None if n is None else int(n),
            top,
        )
        self._write("writing a sampled result row", lambda st: st.add_results([row]))

    def _write(self, doing: str, fn: Callable[[MetricsStore], object]) -> bool:
        """Run one store write; False (counted, logged rate-limited) when it was not written."""
        if self.store is None:
            return False
        try:
            fn(self.store)
            return True
        except EdgeAgentError as err:
            self.store_failures += 1
            self.store_failed[doing] = self.store_failed.get(doing, 0) + 1
            now = time.monotonic()
            if now - self._fail_log_at >= 60.0:
                self._fail_log_at = now
                log.warning(
                    "drift monitoring: %s failed (%s); counted (%d so far), the camera loop goes on",
                    doing,
                    err,
                    self.store_failures,
                )
            return False

    def _load(self, key: str) -> Any:
        if self.store is None:
            return None
        try:
            return self.store.load_state(key)
        except EdgeAgentError as err:
            self.store_failures += 1
            log.warning("drift monitoring: reading %s failed (%s); starting it afresh", key, err)
            return None

    def _tell_one(self, fn: Callable[[Any], None], value: Any) -> bool:
        """Hand ``value`` to one listener; False when it could not take it now (``EdgeAgentError``:
        the outbox's disk; an alert is then kept and handed again). Anything else is a bug of
        ours: logged with its traceback and counted (``listener_failures``), not retried."""
        try:
            fn(value)
            return True
        except EdgeAgentError as err:
            self.listener_failures += 1
            now = time.monotonic()
            if now - self._refused_log_at >= 60.0:
                self._refused_log_at = now
                log.warning(
                    "drift monitoring: %r could not take %s now: %s (%d refusals so far; tried again)",
                    fn,
                    type(value).__name__,
                    err,
                    self.listener_failures,
                )
            return False
        except Exception:
            self.listener_failures += 1
            log.exception("drift monitoring: %r failed on %s", fn, type(value).__name__)
            return True

    # ------------------------------------------------------------------ read by status and /metrics

    def status(self) -> dict[str, Any]:
        v, last = self._current, self.last
        out: dict[str, Any] = {
            "reference": v.origin if v is not None else None,
            "window": str(self.settings.window),
            "windows": self.windows,
            "samples": self.samples,
            "samples_dropped": self.samples_dropped,
            "store_failures": self.store_failures,
            "store_failed": dict(self.store_failed),
            "listener_failures": self.listener_failures,
            "failures": self.failures,
            "alerts_lost": self.alerts_lost,
            "frames_uncounted": self.frames_uncounted,
            "unsent_alerts": len(self._unsent),
            "alerts": [
                {
                    "kind": a.kind,
                    "metric": a.metric,
                    "score": a.score,
                    "value": a.value,
                    "threshold": a.threshold,
                }
                for a in self.active.values()
            ],
        }
        if v is not None and v.reference is None:
            out["learning"] = {"samples": len(v.learning), "of": str(self.settings.learn)}
        if last is not None:
            out["last"] = {
                "index": last.summary.index,
                "end_ts": last.summary.end_ts,
                "samples": last.summary.samples,
                "judged": bool(last.verdict and last.verdict.judged),
                "drifted": list(last.verdict.drifted) if last.verdict else [],
            }
        return out

    def drift_scores(self) -> dict[tuple[str, str], tuple[float, float]]:
        last = self.last
        if last is None or last.verdict is None:
            return {}
        return {(s.metric, s.score): (s.value, s.threshold) for s in last.verdict.scores}

"""``ModelManager``: owns the live ``ModelHandle``; validates, swaps, watches and rolls back.

One update at a time runs on the manager's worker thread, through the persisted
``UpdateMachine`` (ota/update_machine.py): every transition is on disk before its step
runs, and goes to the log and to the ``jobs`` table (ota/job_history.py).

    candidate (drop folder, control API, MQTT later)
      FETCHING    the job is accepted (a local path needs no download)
      VERIFYING   ModelStore.import_bundle: copy into staging, sha256/size/manifest, rename
                  into models/; then the rules: pinned, downgrade, already serving
      STAGED      the version is in the store
      VALIDATING  the validation gate (ota/validation.py), in a child process with a timeout
                  for candidates from outside, on the bundle's golden pairs and recent frames
      ACTIVATING  load + warm up, ``current``/``previous`` pointers, swap the handle
      PROBATION   N frames and/or T seconds of live traffic; fails on inference errors,
                  NaN/Inf outputs, p95 latency over budget, or a collapse of confidence or of
                  the detection rate against the previous version's recent figures
      COMMITTED   gc, counters; the previous model is unloaded

Swap policies: ``availability`` loads the candidate beside the serving model and swaps the
reference between two frames; the previous model stays loaded through probation so a
rollback is a reference swap made the moment a health rule fails.
``memory`` (devices that cannot hold two models) drains the pipeline between two frames,
unloads the old model, loads the new one, and reports the gap (``last_gap_ms``).

The health verdict is taken on the pipeline's results thread (``write``/``on_error`` are the
manager's sink hooks) and the rollback swap happens there at once; the persisted part
(ROLLING_BACK, pointers, FAILED) follows on the worker. A crash in between leaves PROBATION
on disk, and the restart rules (resume, or roll back past ``max_attempts``) take over.

``EDGE_AGENT_CRASH_AT=<STATE>`` (tests only) SIGKILLs the process right after that state is
persisted, before its step runs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.handle import ModelHandle
from agent.source import Frame
from inference.errors import BundleError, EdgeAgentError, ValidationError
from inference.fsio import atomic_write_json
from inference.model import LoadedModel, load_model
from inference.result import Result
from inference.runtime import RuntimeOptions
from ota.job_history import JobHistory
from ota.store import ModelStore, StoredVersion
from ota.update_machine import (
    Action,
    Event,
    State,
    UpdateMachine,
    VersionRef,
    abandon_event,
    resume_action,
)
from ota.validation import ValidationPolicy, ValidationReport, validate, validate_isolated

log = logging.getLogger(__name__)

SWAP_POLICIES = ("availability", "memory")
RECENT = 256  # frames of the serving model kept for the probation comparison
LIVE_FRAMES = 4  # recent frames handed to validation
REJECTED_KEEP = 5  # refused drops kept in incoming/.rejected/ for a look
BASELINE_FILE = "probation-baseline.json"  # the previous version's figures for a resumed probation


@dataclass(frozen=True)
class ManagerPolicy:
    swap_policy: str = "availability"
    probation_frames: int | None = None  # None: manifest, else 100
    probation_seconds: float | None = None  # None: manifest, else 0
    max_error_rate: float | None = None  # None: manifest, else 0.05
    min_confidence_ratio: float | None = None  # None: manifest, else 0.5
    latency_budget_ms: float | None = None  # p95 during probation; None: manifest validation budget
    allow_downgrade: bool = False
    isolate_validation: bool = True
    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    warmup_runs: int = 2


@dataclass
class _Probation:
    """Health figures of a candidate on live frames; updated on the inference thread only."""

    candidate: LoadedModel
    previous: LoadedModel | None
    need_frames: int
    need_seconds: float
    max_error_rate: float
    min_confidence_ratio: float
    budget_ms: float | None
    prev_confidence: float | None
    prev_detection_rate: float | None
    started: float
    frames: int = 0
    errors: int = 0
    confidence_sum: float = 0.0
    detector_frames: int = 0  # frames decoded as detections (detectors only)
    detection_frames: int = 0  # of those, frames with at least one detection
    latencies: list[float] = field(default_factory=list)
    verdict: str | None = None  # None while pending; "" passed; else the failure reason
    decided_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def decide(self, verdict: str, now: float) -> None:
        self.verdict = verdict
        self.decided_at = now
        self.done.set()

    def evaluate(self, now: float, final: bool) -> str | None:
        """The failure reason, "" for a pass, or None while undecided."""
        seen = self.frames + self.errors
        if self.errors and seen >= 5 and self.errors / seen > self.max_error_rate:
            return f"inference errors on {self.errors} of {seen} frames (max rate {self.max_error_rate:g})"
        if self.errors >= 5 and self.frames == 0:
            return f"inference failed on all of the first {self.errors} frames"
        if not final and (self.frames < self.need_frames or now - self.started < self.need_seconds):
            return None
        if self.frames == 0:
            return None
        if self.budget_ms is not None and self.latencies:
            p95 = float(np.percentile(self.latencies, 95))
            if p95 > self.budget_ms:
                return f"p95 latency {p95:.1f} ms is over the budget of {self.budget_ms:g} ms"
        conf = self.confidence_sum / self.frames
        prev_conf = self.prev_confidence
        if prev_conf is not None and prev_conf > 0.05 and conf < self.min_confidence_ratio * prev_conf:
            return (
                f"confidence collapsed: mean {conf:.3f} against {prev_conf:.3f} for the "
                f"previous version (min ratio {self.min_confidence_ratio:g})"
            )
        rate = self.detection_frames / max(1, self.detector_frames)
        prev_rate = self.prev_detection_rate
        if (
            self.detector_frames
            and prev_rate is not None
            and prev_rate > 0.2
            and rate < self.min_confidence_ratio * prev_rate
        ):
            return (
                f"detection rate collapsed: {rate:.2f} of frames against {prev_rate:.2f} "
                f"for the previous version (min ratio {self.min_confidence_ratio:g})"
            )
        return ""


@dataclass(frozen=True)
class _Job:
    kind: str  # "path" | "version" | "rollback"
    job_id: str
    origin: str
    path: Path | None = None
    version: StoredVersion | None = None
    explicit: bool = False


def _ref(v: StoredVersion | None) -> VersionRef | None:
    if v is None:
        return None
    return VersionRef(v.name, v.version, v.sha256, v.ref, v.release_counter)


def _close_all(models: list[LoadedModel]) -> None:
    for m in models:
        try:
            m.close()
        except Exception:
            log.exception("unloading %s failed", m)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _serves(model: LoadedModel, v: StoredVersion) -> bool:
    return (model.name, model.version, model.sha256) == (v.name, v.version, v.sha256)


def _new_job_id(origin: str) -> str:
    return f"{origin}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


class ModelManager:
    """See the module docstring. Construct, ``boot`` (before the pipeline), ``attach``, ``start``."""

    def __init__(
        self,
        store: ModelStore,
        machine: UpdateMachine,
        *,
        options: RuntimeOptions | None = None,
        runtime: str | None = None,
        policy: ManagerPolicy | None = None,
        history: JobHistory | None = None,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[..., LoadedModel] = load_model,
    ) -> None:
        self.store = store
        self.machine = machine
        self.options = options or RuntimeOptions()
        self.runtime = runtime
        self.policy = policy or ManagerPolicy()
        if self.policy.swap_policy not in SWAP_POLICIES:
            raise ValueError(f"swap policy {self.policy.swap_policy!r}: use one of {SWAP_POLICIES}")
        self.history = history
        self.clock = clock
        self.loader = loader
        self.handle: ModelHandle | None = None
        self._between_frames: Callable[[Callable[[], object]], None] | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._probation: _Probation | None = None
        self._resume_probation = False  # boot found a job in ACTIVATING/PROBATION: resume it once attached
        self._prev_model: LoadedModel | None = None  # availability: the replaced model, kept warm
        self._probation_candidate: LoadedModel | None = None  # a candidate rejected on probation
        self._snap: tuple[float | None, float | None] = (None, None)  # previous confidence, detection rate
        self._retiring: list[LoadedModel] = []  # replaced models waiting to be unloaded (see _retire)
        self._retire_lock = threading.Lock()
        self._recent_conf: deque[float] = deque(maxlen=RECENT)
        self._recent_det: deque[int] = deque(maxlen=RECENT)
        self._recent_frames: deque[npt.NDArray[np.uint8]] = deque(maxlen=LIVE_FRAMES)
        self._frame_every = 30
        self._crash_at = os.environ.get("EDGE_AGENT_CRASH_AT", "").upper()
        self.last_job: dict[str, Any] = {}
        self.last_gap_ms: float | None = None
        self.last_rollback_ms: float | None = None  # the swap back itself, on the inference thread
        self.last_decision_at: float | None = None  # time.monotonic() of the last probation verdict
        self.busy = threading.Event()  # set while a job runs (tests and benchmarks wait on it)

    # ------------------------------------------------------------------ persisted transitions

    def _advance(self, event: Event, *, reason: str | None = None, **kw: Any) -> State:
        before = self.machine.state
        after = self.machine.advance(event, reason=reason, **kw)
        rec = self.machine.record
        target = rec.target
        if self.history is not None:
            try:
                self.history.record(
                    job_id=rec.job_id or "",
                    source=before.value,
                    event=event.value,
                    target=after.value,
                    reason=reason,
                    model=target.name if target else None,
                    version=target.version if target else None,
                )
            except EdgeAgentError as err:
                log.warning("job history: %s", err)
        self.last_job = {
            "job_id": rec.job_id,
            "phase": after.value,
            "reason": rec.reason,
            "outcome": rec.outcome.value if rec.outcome else None,
            "target": target.to_json() if target else None,
        }
        if self._crash_at and self._crash_at == after.value:
            log.warning("EDGE_AGENT_CRASH_AT=%s: killing the process now", self._crash_at)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        return after

    def _fail(self, reason: str) -> None:
        """ERROR from the current state, then report and RESET when it ends in FAILED."""
        state = self._advance(Event.ERROR, reason=reason)
        if state is State.ROLLING_BACK:
            self._finish_rollback(reason)
            return
        log.error("update %s failed: %s", self.machine.record.job_id, reason)
        self._advance(Event.RESET)

    # ------------------------------------------------------------------ start-up

    def boot(self, seed: Path | None = None) -> LoadedModel:
        """Finish or undo what a crash interrupted, seed an empty store, load ``current``.

        Raises ``BundleError`` when no version can be served.
        """
        self._resume()
        if self.store.current() is None:
            if seed is None:
                raise BundleError(
                    f"the model store {self.store.root} is empty: give --model to seed it, "
                    f"or drop a bundle into {self.store.incoming_dir}"
                )
            stored = self.store.import_bundle(seed, "seed")
            self.store.set_current(stored)
            self.machine.record_counters(stored.name, stored.version, stored.release_counter)
            log.info("seeded the store with %s", stored)
        return self._load_serving()

    def _load_serving(self) -> LoadedModel:
        tried: list[str] = []
        for attempt in range(2):
            cur = self.store.current()
            if cur is None:
                break
            try:
                return self.loader(cur.path, self.options, self.runtime)
            except EdgeAgentError as err:
                tried.append(f"{cur}: {err}")
                log.error("cannot serve %s: %s", cur, err)
                if attempt == 0 and self.store.previous() not in (None, cur):
                    self.store.rollback_pointers()
                    continue
                break
        raise BundleError("no stored version can be served: " + "; ".join(tried or ["the store is empty"]))

    def _resume(self) -> None:
        action = self.machine.resume()
        for _ in range(12):
            if action is Action.NOTHING:
                return
            phase = self.machine.state
            if action is Action.DISCARD_STAGING:
                self.store.discard_staging()
                self._fail(f"interrupted in {phase.value} by a restart")
            elif action in (Action.RESUME_ACTIVATION, Action.RESUME_PROBATION):
                target = self._stored(self.machine.record.target)
                if target is None:
                    self._fail("the candidate is not in the store any more")
                else:
                    self.store.set_current(target)
                    if phase is State.ACTIVATING:
                        self._advance(Event.ACTIVATED, reason="resumed after a restart")
                    self._resume_probation = True
                    return
            elif action is Action.ROLL_BACK:
                self._advance(
                    Event.ERROR, reason=f"restarted {self.machine.record.attempts} times in {phase.value}"
                )
                self._finish_rollback(self.machine.record.reason or "crash loop")
            elif action is Action.FINISH_ROLLBACK:
                self._finish_rollback(self.machine.record.reason or "rollback interrupted by a restart")
            elif action is Action.FINISH_COMMIT:
                self._finish_commit()
            elif action is Action.FINISH_FAILURE:
                self._advance(Event.RESET)
            elif action is Action.ABANDON:
                self._advance(abandon_event(phase), reason=f"abandoned {phase.value} after repeated restarts")
            action = resume_action(
                self.machine.record,
                max_attempts=self.machine.max_attempts,
                max_resumes=self.machine.max_resumes,
            )
        log.error("update state did not settle after a restart: %s", self.machine.state.value)

    def _stored(self, ref: VersionRef | None) -> StoredVersion | None:
        """The stored version a state-file reference names, if it is (still) in the store."""
        return None if ref is None else self.store.get(ref.name, ref.version, ref.sha256)

    def attach(
        self, handle: ModelHandle, call_between_frames: Callable[[Callable[[], object]], None]
    ) -> None:
        """Give the manager the pipeline's handle and its between-frames hook."""
        self.handle = handle
        self._between_frames = call_between_frames
        if self._resume_probation:
            self._resume_probation = False
            self._jobs.put(_Job("resume", self.machine.record.job_id or _new_job_id("resume"), "restart"))

    # ------------------------------------------------------------------ service

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        p = self._probation
        if p is not None:
            p.done.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._retire_lock:
            done, self._retiring = self._retiring, []
        _close_all(done)

    def _work(self) -> None:
        while not self._stopping.is_set():
            job = self._jobs.get()
            if job is None:
                return
            self.busy.set()
            try:
                self._run_job(job)
            except Exception as err:
                log.exception("update job %s failed unexpectedly", job.job_id)
                try:
                    if self.machine.state is not State.IDLE:
                        self._fail(f"internal error: {type(err).__name__}: {err}")
                except Exception:
                    log.exception("could not record the failure of %s", job.job_id)
            finally:
                if self._jobs.empty():
                    self.busy.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.busy.is_set() and self._jobs.empty():
                return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ requests

    def submit(self, path: Path, origin: str = "drop-folder") -> str:
        """Queue a candidate bundle (folder, .tar.gz or bare model file); returns the job id."""
        job = _Job("path", _new_job_id(origin), origin, path=Path(path))
        self.busy.set()
        self._jobs.put(job)
        log.info("update job %s queued: %s", job.job_id, path)
        return job.job_id

    def on_candidate(self, path: Path) -> None:
        """The ``DropFolderWatcher`` callback."""
        self.submit(path, "drop-folder")

    def activate(self, version: int, name: str | None = None) -> dict[str, Any]:
        cur = self.store.current()
        name = name or (cur.name if cur else None)
        candidates = [v for v in self.store.versions(name) if v.version == version]
        if not candidates:
            from agent.control import RequestError

            raise RequestError(
                f"no version {version} of {name} in the store: see `edge-agent models list`", 404
            )
        if candidates[-1] == cur:
            from agent.control import RequestError

            raise RequestError(f"{cur} is already serving", 409)
        job = _Job("version", _new_job_id("activate"), "control", version=candidates[-1], explicit=True)
        self.busy.set()
        self._jobs.put(job)
        return {"message": f"activating {candidates[-1]} (job {job.job_id})", "job_id": job.job_id}

    def rollback(self) -> dict[str, Any]:
        p = self._probation
        if p is not None and p.verdict is None:
            self._reject_probation(p, "manual rollback requested")
            return {"message": "rolling back the version on probation"}
        if self.store.previous() is None or self.store.previous() == self.store.current():
            from agent.control import RequestError

            raise RequestError("no previous version to roll back to", 409)
        job = _Job("rollback", _new_job_id("rollback"), "control", explicit=True)
        self.busy.set()
        self._jobs.put(job)
        return {
            "message": f"rolling back to {self.store.previous()} (job {job.job_id})",
            "job_id": job.job_id,
        }

    def pin(self, version: int | None) -> dict[str, Any]:
        target = None
        if version is not None:
            cur = self.store.current()
            matches = [v for v in self.store.versions(cur.name if cur else None) if v.version == version]
            if not matches:
                from agent.control import RequestError

                raise RequestError(f"no version {version} in the store", 404)
            target = matches[-1]
        pinned = self.store.pin(target)
        return {"message": f"pinned {pinned}"}

    def unpin(self) -> dict[str, Any]:
        self.store.unpin()
        return {"message": "unpinned"}

    # ------------------------------------------------------------------ jobs

    def _run_job(self, job: _Job) -> None:
        if job.kind == "resume":
            self._probation_step(resumed=True)
            return
        if self.machine.state is not State.IDLE:
            log.error("job %s skipped: the update machine is in %s", job.job_id, self.machine.state.value)
            return
        if job.kind == "rollback":
            cur, prev = self.store.current(), self.store.previous()
            # "previous" is always where a rollback goes; "target" is what it leaves
            self._advance(
                Event.ROLLBACK,
                job_id=job.job_id,
                target=_ref(cur),
                previous=_ref(prev),
                reason="manual rollback",
            )
            self._finish_rollback("manual rollback")
            return
        if job.kind == "version":
            assert job.version is not None
            self._advance(
                Event.SELECT,
                job_id=job.job_id,
                target=_ref(job.version),
                previous=_ref(self.store.current()),
                reason="explicit activation",
            )
            stored = job.version
        else:
            assert job.path is not None
            self._advance(
                Event.START,
                job_id=job.job_id,
                previous=_ref(self.store.current()),
                reason=f"{job.origin}: {job.path.name}",
            )
            self._advance(Event.FETCHED)
            try:
                stored = self.store.import_bundle(job.path, job.job_id)
            except EdgeAgentError as err:
                self._dispose(job.path, rejected=True)
                self._fail(f"rejected {job.path.name}: {err}")
                return
            self._dispose(job.path, rejected=False)
            refusal = self._refusal(stored, job.explicit)
            if refusal:
                self._fail(refusal)
                return
            self._advance(Event.VERIFIED, target=_ref(stored))
        self._advance(Event.STORED)
        report = self._validate(stored, isolated=self.policy.isolate_validation)
        if not report.ok:
            self._fail(f"validation failed: {report.reason}")
            return
        self._snapshot_previous()  # on disk before ACTIVATING: a resumed probation needs it
        self._advance(Event.VALIDATED, reason=f"validated (median {report.latency_p50_ms:.1f} ms)")
        try:
            self._activate(stored)
        except EdgeAgentError as err:
            self._fail(f"activation failed: {err}")
            return
        self._advance(Event.ACTIVATED)
        self._probation_step(resumed=False)

    def _dispose(self, path: Path, *, rejected: bool) -> None:
        """Clear a handled drop from ``incoming/``: removed once the store holds a copy,
        moved to ``incoming/.rejected/`` (hidden from the watcher) when it was refused."""
        incoming = self.store.incoming_dir
        try:
            if path.resolve().parent != incoming.resolve():
                return  # not a drop: leave other people's files alone
            if rejected:
                aside = incoming / ".rejected"
                aside.mkdir(exist_ok=True)
                dest = aside / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
                os.replace(path, dest)
                kept = sorted(aside.iterdir(), key=lambda p: p.stat().st_mtime)
                for old in kept[:-REJECTED_KEEP]:
                    _remove(old)
            else:
                _remove(path)
        except OSError as err:
            log.warning("could not clear %s from %s: %s", path.name, incoming, err)

    def _refusal(self, stored: StoredVersion, explicit: bool) -> str | None:
        cur = self.store.current()
        pinned = self.store.pinned()
        if pinned is not None and not explicit:
            return f"{pinned} is pinned: unpin it (`edge-agent models unpin`) to let {stored} replace it"
        if cur is not None and cur == stored:
            return f"{stored} is already serving"
        if cur is not None and cur.name == stored.name and not (explicit or self.policy.allow_downgrade):
            last = max(cur.version, self.machine.last_version(stored.name) or 0)
            if stored.version < last or (stored.version == last and stored.sha256 != cur.sha256):
                return (
                    f"downgrade refused: {stored} is not newer than v{last}; activate it explicitly "
                    f"(`edge-agent models activate {stored.version}`) or run with --allow-downgrade"
                )
        rc = stored.release_counter
        if rc is not None and rc < self.machine.max_release_counter and not explicit:
            return (
                f"release counter {rc} is lower than {self.machine.max_release_counter} (replay or downgrade)"
            )
        return None

    def _validate(self, stored: StoredVersion, *, isolated: bool) -> ValidationReport:
        frames = list(self._recent_frames)
        if isolated:
            return validate_isolated(stored.path, frames, self.policy.validation, self.options)
        return validate(stored.path, frames, self.policy.validation, self.options)

    # ------------------------------------------------------------------ swapping

    def _call_between_frames(self, fn: Callable[[], None], timeout: float = 60.0) -> None:
        """Run ``fn`` on the inference thread between two frames and wait for it."""
        if self._between_frames is None:
            fn()
            return
        done = threading.Event()
        errors: list[BaseException] = []

        def wrapped() -> None:
            try:
                fn()
            except BaseException as err:  # handed back to the waiting worker
                errors.append(err)
            finally:
                done.set()

        self._between_frames(wrapped)
        if not done.wait(timeout):
            raise ValidationError("the inference loop did not reach a frame boundary in time")
        if errors:
            raise errors[0]

    def _warm(self, model: LoadedModel) -> None:
        frame = self._recent_frames[-1] if self._recent_frames else np.zeros((480, 640, 3), np.uint8)
        for _ in range(self.policy.warmup_runs):
            model.infer(frame)

    def _activate(self, stored: StoredVersion) -> None:
        assert self.handle is not None
        handle = self.handle
        if self.policy.swap_policy == "availability":
            model = self.loader(stored.path, self.options, self.runtime)
            try:
                self._warm(model)
                self.store.set_current(stored)
            except BaseException:
                model.close()
                raise
            self._prev_model = handle.current
            handle.swap(model)
            log.info("swapped to %s (previous kept warm through probation)", stored)
            return
        # memory: drain, unload, load — the gap is what the pipeline waits
        self.store.set_current(stored)

        def swap() -> None:
            t0 = time.perf_counter()
            old = handle.current
            old.close()
            try:
                model = self.loader(stored.path, self.options, self.runtime)
            except BaseException:
                handle.swap(self.loader(Path(old.bundle.root), self.options, self.runtime))
                raise
            self._warm(model)
            handle.swap(model)
            self.last_gap_ms = (time.perf_counter() - t0) * 1000.0

        self._prev_model = None
        try:
            self._call_between_frames(swap)
        except BaseException:
            self.store.rollback_pointers()
            raise
        log.info("swapped to %s (memory policy: %.0f ms without a model)", stored, self.last_gap_ms or 0.0)

    def _snapshot_previous(self) -> None:
        """The serving version's recent figures, the baseline of the candidate's probation.

        Kept on disk too (``probation-baseline.json``), so a probation resumed after a crash
        still compares against the previous version instead of nothing."""
        conf = list(self._recent_conf)
        det = list(self._recent_det)
        self._snap = (
            (sum(conf) / len(conf)) if len(conf) >= 10 else None,
            (sum(det) / len(det)) if len(det) >= 10 else None,
        )
        baseline = {
            "job_id": self.machine.record.job_id,
            "confidence": self._snap[0],
            "detection_rate": self._snap[1],
        }
        try:
            atomic_write_json(self.store.root / BASELINE_FILE, baseline, self.store.fs)
        except OSError as err:
            log.warning("could not save the probation baseline: %s", err)

    def _load_baseline(self) -> tuple[float | None, float | None]:
        try:
            data = json.loads((self.store.root / BASELINE_FILE).read_bytes())
        except (OSError, ValueError):
            return (None, None)
        if not isinstance(data, dict) or data.get("job_id") != self.machine.record.job_id:
            return (None, None)

        def num(v: Any) -> float | None:
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return (num(data.get("confidence")), num(data.get("detection_rate")))

    # ------------------------------------------------------------------ probation

    def _probation_settings(self, model: LoadedModel) -> tuple[int, float, float, float, float | None]:
        m = model.bundle.manifest
        mp: dict[str, Any] = dict(getattr(m, "probation", None) or {})
        mv: dict[str, Any] = dict(getattr(m, "validation", None) or {})
        pol = self.policy

        def pick(conf: Any, key: str, default: Any) -> Any:
            return conf if conf is not None else mp.get(key, default)

        frames = int(pick(pol.probation_frames, "frames", 100))
        seconds = float(pick(pol.probation_seconds, "seconds", 0.0))
        max_err = float(pick(pol.max_error_rate, "max_error_rate", 0.05))
        min_ratio = float(pick(pol.min_confidence_ratio, "min_confidence_ratio", 0.5))
        budget = pol.latency_budget_ms if pol.latency_budget_ms is not None else mv.get("max_latency_ms")
        return frames, seconds, max_err, min_ratio, None if budget is None else float(budget)

    def _probation_step(self, *, resumed: bool) -> None:
        assert self.handle is not None
        cand = self.handle.current
        frames, seconds, max_err, min_ratio, budget = self._probation_settings(cand)
        prev_conf, prev_det = self._snap if not resumed else self._load_baseline()
        if resumed and self.policy.swap_policy == "availability":
            prev = self._stored(self.machine.record.previous)
            if prev is not None and prev != self.store.current():
                try:
                    self._prev_model = self.loader(prev.path, self.options, self.runtime)
                except EdgeAgentError as err:
                    log.warning("previous version %s cannot be kept warm: %s", prev, err)
        p = _Probation(
            cand,
            self._prev_model,
            frames,
            seconds,
            max_err,
            min_ratio,
            budget,
            prev_conf,
            prev_det,
            self.clock(),
        )
        log.info(
            "probation of %s v%s: %d frames%s",
            cand.name,
            cand.version,
            frames,
            f", {seconds:g} s" if seconds else "",
        )
        self._probation = p
        while not p.done.wait(0.2):
            if self._stopping.is_set():
                return
        if self._stopping.is_set() and p.verdict is None:
            return
        self._probation = None
        if p.verdict:
            self._probation_candidate = p.candidate
            self._finish_rollback(p.verdict)
        else:
            self._advance(Event.PROBATION_PASSED)
            self._finish_commit()

    def _reject_probation(self, p: _Probation, reason: str) -> None:
        """Fail probation now; with a warm previous model, serve it from the next frame on."""
        if p.verdict is not None:
            return
        if p.previous is not None and self.handle is not None:
            self.handle.swap(p.previous)
        p.decide(reason, self.clock())
        log.error("probation of %s v%s failed: %s", p.candidate.name, p.candidate.version, reason)

    def _finish_commit(self) -> None:
        prev = self._prev_model
        self._prev_model = None
        if prev is not None and (self.handle is None or prev is not self.handle.current):
            self._retire(prev)
        try:
            self.store.gc()
        except EdgeAgentError as err:
            log.warning("gc after commit: %s", err)
        self._advance(Event.FINISHED)
        log.info("committed %s", self.store.current())

    def _finish_rollback(self, reason: str) -> None:
        """The persisted part of a rollback: ROLLING_BACK, pointers, serving model, FAILED, IDLE.

        The destination is the job's ``previous`` (what served before the job), whatever the
        ``previous`` pointer says, so a failure before the pointers moved goes nowhere."""
        if self.machine.state is not State.ROLLING_BACK:
            self._advance(Event.ERROR, reason=reason)
        ref = self.machine.record.previous
        dest = self._stored(ref)
        try:
            if dest is None:
                raise BundleError(f"the version to roll back to ({ref}) is not in the store")
            self._point_current_to(dest)
            self._serve(dest)
        except EdgeAgentError as err:
            self._advance(Event.ERROR, reason=f"{reason}; rollback failed: {err}")
            self._advance(Event.RESET)
            return
        self._advance(Event.ROLLED_BACK, reason=reason)
        self._advance(Event.RESET)
        log.warning("rolled back to %s: %s", dest, reason)

    def _point_current_to(self, v: StoredVersion) -> None:
        if self.store.current() == v:
            return
        if self.store.previous() == v:
            self.store.rollback_pointers()
        else:
            self.store.set_current(v)

    def _serve(self, v: StoredVersion) -> None:
        """Make the handle serve ``v`` (already loaded, kept warm, or loaded now) and unload the rest."""
        handle = self.handle
        if handle is None:  # at boot: the pipeline loads ``current`` itself
            return
        if not _serves(handle.current, v):
            warm = self._prev_model
            if warm is not None and _serves(warm, v):
                self._retire(handle.swap(warm))
                self._prev_model = None
            elif self.policy.swap_policy == "memory":

                def reload() -> None:
                    t0 = time.perf_counter()
                    handle.current.close()
                    handle.swap(self.loader(v.path, self.options, self.runtime))
                    self.last_gap_ms = (time.perf_counter() - t0) * 1000.0

                self._call_between_frames(reload)
            else:
                model = self.loader(v.path, self.options, self.runtime)
                self._warm(model)
                self._retire(handle.swap(model))
        for leftover in (self._probation_candidate, self._prev_model):
            if leftover is not None and leftover is not handle.current:
                self._retire(leftover)
        self._probation_candidate = None
        self._prev_model = None

    def _retire(self, model: LoadedModel) -> None:
        """Unload ``model`` once no frame can still be using it.

        Results are written in frame order, so the first result written by another model
        proves every frame that ran ``model`` is done with the runtime (``write`` checks).
        The unload then runs on a short-lived thread, off the inference thread's path:
        freeing a runtime holds the GIL for milliseconds, and right before a frame is the
        worst moment for that."""
        if self._between_frames is None:
            model.close()
            return
        with self._retire_lock:
            self._retiring.append(model)

    def _unload_retired(self, serving: Any) -> None:
        with self._retire_lock:
            if any(serving is m for m in self._retiring):
                return
            done, self._retiring = self._retiring, []
        threading.Thread(target=_close_all, args=(done,), name="unload", daemon=True).start()

    # ------------------------------------------------------------------ sink hooks (results thread)

    def write(self, frame: Frame, result: Result, model: Any) -> None:
        """Called by the pipeline after every frame: recent figures and probation health."""
        if self._retiring:
            self._unload_retired(model)
        detector = result.kind == "detections"
        self._recent_conf.append(float(result.confidence))
        if detector:
            self._recent_det.append(1 if result.detections else 0)
        if frame.index % self._frame_every == 0:
            self._recent_frames.append(frame.image.copy())
        p = self._probation
        if p is None or p.verdict is not None or model is not p.candidate:
            return
        p.frames += 1
        p.confidence_sum += float(result.confidence)
        if detector:
            p.detector_frames += 1
            p.detection_frames += 1 if result.detections else 0
        p.latencies.append(result.latency_ms)
        now = self.clock()
        if not result.finite:
            self._rollback_now(p, f"NaN or Inf in the outputs of frame {frame.index}")
            return
        verdict = p.evaluate(now, final=False)
        if verdict is None:
            return
        if verdict:
            self._rollback_now(p, verdict)
        else:
            p.decide("", now)

    def on_error(self, frame: Frame, model: Any, err: BaseException) -> None:
        """Called by the pipeline when a model's ``infer`` raised on a frame."""
        p = self._probation
        if p is None or p.verdict is not None or model is not p.candidate:
            return
        p.errors += 1
        verdict = p.evaluate(self.clock(), final=False)
        if verdict:
            self._rollback_now(p, verdict)

    def _rollback_now(self, p: _Probation, reason: str) -> None:
        t0 = time.perf_counter()
        self.last_decision_at = time.monotonic()
        self._reject_probation(p, reason)
        self.last_rollback_ms = (time.perf_counter() - t0) * 1000.0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        rec = self.machine.record
        prev = self.store.previous()
        pinned = self.store.pinned()
        return {
            "phase": rec.phase.value,
            "job_id": rec.job_id,
            "reason": rec.reason,
            "outcome": rec.outcome.value if rec.outcome else None,
            "previous": None
            if prev is None
            else {"name": prev.name, "version": prev.version, "sha256": prev.sha256},
            "pinned": None if pinned is None else pinned.version,
            "last_job": self.last_job,
            "swap_policy": self.policy.swap_policy,
            "last_gap_ms": self.last_gap_ms,
        }

    def models(self) -> list[dict[str, Any]]:
        cur, prev, pinned = self.store.current(), self.store.previous(), self.store.pinned()
        return [
            {
                "name": v.name,
                "version": v.version,
                "sha256": v.sha256,
                "path": str(v.path),
                "current": v == cur,
                "previous": v == prev,
                "pinned": v == pinned,
            }
            for v in self.store.versions()
        ]

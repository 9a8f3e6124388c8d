"""``ModelManager``: the job runner, and the one place that decides what serves.

Every request for a version becomes a persisted ``UpdateJob`` (ota/update_job.py), queued in
``update-state.json`` before it is acknowledged; one worker thread runs the jobs in order
through the persisted ``UpdateMachine`` (every transition is on disk before its step runs)
and emits one ``UpdateEvents`` event per step and outcome.

    deploy (drop folder, control API, MQTT)
      FETCHING    a local path needs nothing; a remote job's bundle is downloaded into
                  ``staging/<job>/`` by the ``fetcher`` (ota/remote_bundle.py: manifest sha256,
                  signature, compat, resumable model download), resumed after a restart
      VERIFYING   ModelStore.import_bundle: copy into staging, sha256/size/manifest (and the
                  manifest signature, ``bundle_check``), rename into models/; then the rules:
                  pin, downgrade, release counter, already serving
      STAGED      the version is in the store      (an ``activate`` job starts here, same rules)
      VALIDATING  the validation gate, in a child process with a timeout, on the bundle's
                  golden pairs and recent live frames
      ACTIVATING  the previous version's figures (the probation baseline) are on disk first;
                  then ``Swapper.activate`` and the ``current``/``previous`` pointers
      PROBATION   ``ProbationPolicy`` (ota/probation.py) judges the live figures
      COMMITTED   SUCCEEDED; the standby is unloaded, gc
    rollback      ROLLING_BACK to what served before the job, FAILED (rolled_back)

Deploy jobs wait ``QUEUED`` while installs are on hold (``set_hold``, persisted) or outside
the update ``window``; rollbacks and explicit activations are not held back.

Decisions about what serves are ordered in this one place, whoever asks: jobs, manual
rollbacks and activations under ``_lock``; the probation verdict (results thread, worker's
deadline tick, manual rollback) under ``_verdict_lock``, which is held for microseconds and
never across a swap, so the results thread never waits behind a swap that waits for the
inference thread. The first verdict of a probation wins; a rejected
candidate is swapped out on the spot (``Swapper.revert_now``), the persisted part follows
on the worker. Manual actions obey the same rules as jobs (pin, downgrade, release
counter) unless ``force`` is given, which is logged and recorded in the job.

``faults`` is called with ``"after:<STATE>"`` once a state is on disk, and by the swapper
with the name of each of its steps: the fault points the crash and swap tests inject into.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.control import RequestError
from agent.handle import ModelHandle
from agent.source import Frame
from agent.swapper import Swapper, identity, is_loaded
from inference.errors import BundleError, EdgeAgentError, TransientError
from inference.model import LoadedModel, load_model
from inference.result import Result
from inference.runtime import RuntimeOptions
from ota.errors import Rejected
from ota.probation import Baseline, Decision, ProbationFigures, ProbationPolicy, Verdict, fail
from ota.store import ModelStore, StoredVersion
from ota.update_events import JobEvent, JobStatus, UpdateEvents, log_event, status_for
from ota.update_job import UpdateJob, VersionRef, new_job_id
from ota.update_machine import Action, Event, State, UpdateMachine, abandon_event, resume_action
from ota.update_window import UpdateWindow
from ota.validation import ValidationPolicy, ValidationReport, validate, validate_isolated

log = logging.getLogger(__name__)

RECENT = 256  # results of the serving model kept for the probation baseline
LIVE_FRAMES = 4  # recent frames handed to validation
REJECTED_KEEP = 5  # refused drops kept in incoming/.rejected/ for a look
TICK_S = 0.2  # the worker re-judges probation this often without frames (the deadline)
WINDOW_POLL_S = 60.0  # a held-back job is looked at again at least this often

#: ``fetcher(job, dest, wait) -> bundle folder``: brings a remote job's bundle into ``dest``;
#: ``wait(seconds)`` sleeps and returns True when the manager is stopping.
Fetcher = Callable[[UpdateJob, Path, Callable[[float], bool]], Path]


@dataclass(frozen=True)
class ManagerPolicy:
    swap_policy: str = "availability"
    probation_frames: int | None = None  # None: manifest, else 100
    probation_seconds: float | None = None  # None: manifest, else 0
    probation_max_seconds: float | None = None  # None: manifest, else 600
    on_thin_evidence: str | None = None  # None: manifest, else "rollback"
    max_error_rate: float | None = None  # None: manifest, else 0.05
    min_confidence_ratio: float | None = None  # None: manifest, else 0.5
    latency_budget_ms: float | None = None  # p95 inference time; None: manifest validation budget
    allow_downgrade: bool = False
    isolate_validation: bool = True
    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    warmup_runs: int = 2


@dataclass
class _Probation:
    candidate: LoadedModel
    policy: ProbationPolicy
    figures: ProbationFigures
    verdict: Verdict | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
        events: UpdateEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[..., LoadedModel] = load_model,
        faults: Callable[[str], None] = lambda point: None,
        before_verdict: Callable[[Verdict], None] | None = None,
        fetcher: Fetcher | None = None,
        bundle_check: Callable[[Path], None] | None = None,
        window: UpdateWindow | None = None,
        local_now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.store = store
        self.machine = machine
        self.options = options or RuntimeOptions()
        self.runtime = runtime
        self.policy = policy or ManagerPolicy()
        self.events = events or UpdateEvents()
        self.events.subscribe(log_event)
        self.clock = clock
        self.loader = loader
        self.faults = faults
        self.before_verdict = before_verdict
        self.fetcher = fetcher
        self.bundle_check = bundle_check
        self.window = window
        self.local_now = local_now
        self._resume_job: UpdateJob | None = None  # a download interrupted by a restart
        self.phase_listeners: list[Callable[[State], None]] = []  # after every persisted transition
        self._recent_conf: deque[float] = deque(maxlen=RECENT)
        self._recent_det: deque[int] = deque(maxlen=RECENT)
        self._recent_frames: deque[npt.NDArray[np.uint8]] = deque(maxlen=LIVE_FRAMES)
        self._frame_every = 30
        self.swapper = Swapper(
            lambda path: self.loader(path, self.options, self.runtime),
            policy=self.policy.swap_policy,
            warmup_runs=self.policy.warmup_runs,
            warm_frame=lambda: self._recent_frames[-1] if self._recent_frames else None,
            faults=faults,
        )
        self._lock = threading.RLock()  # orders jobs and manual actions (may be held across a swap)
        # orders verdicts: held for microseconds, never across a load or a wait for the inference
        # thread, so the results thread can never block behind a swap that waits for it
        self._verdict_lock = threading.Lock()
        self._cond = threading.Condition()  # the worker's wake-up: a job queued, a stop
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running: str | None = None  # id of the job the worker runs
        self._probation: _Probation | None = None
        self._resume_probation = False
        self.last_job: dict[str, Any] = {}
        self.last_rollback_ms: float | None = None  # the swap back itself
        self.last_decision_at: float | None = None  # time.monotonic() of the last failed verdict
        # Frames a rejected candidate ran before its verdict fell are still written out (at most
        # the pipeline's depth: the results queue and the frame being decoded); counted here.
        self._rejected: Any = None
        self.results_after_verdict = 0

    @property
    def handle(self) -> ModelHandle | None:
        return self.swapper.handle

    @property
    def last_gap_ms(self) -> float | None:
        return self.swapper.last_gap_ms

    # ------------------------------------------------------------------ persisted transitions

    def _advance(
        self, event: Event, *, reason: str | None = None, rejected: bool = False, **kw: Any
    ) -> State:
        after = self.machine.advance(event, reason=reason, **kw)
        rec = self.machine.record
        target = rec.target
        self.last_job = {
            "job_id": rec.job_id,
            "phase": after.value,
            "reason": rec.reason,
            "outcome": rec.outcome.value if rec.outcome else None,
            "target": target.to_json() if target else None,
            "force": rec.job.force if rec.job else False,
        }
        said = status_for(after, rec.outcome, rejected=rejected)
        if said == (JobStatus.FAILED, "rolled_back") and rec.job is not None and rec.job.action == "rollback":
            said = (JobStatus.SUCCEEDED, None)  # a rollback job that rolled back did what it was asked
        if said is not None:
            status, what = said
            self._emit(
                status,
                step=what if status is JobStatus.IN_PROGRESS else None,
                detail=what if status is not JobStatus.IN_PROGRESS else None,
                reason=reason if status is not JobStatus.IN_PROGRESS else None,
            )
        for listener in list(self.phase_listeners):
            listener(after)
        self.faults(f"after:{after.value}")
        return after

    def _emit(
        self,
        status: JobStatus,
        *,
        step: str | None = None,
        detail: str | None = None,
        reason: str | None = None,
        job: UpdateJob | None = None,
    ) -> None:
        rec = self.machine.record
        job = job or rec.job
        target = rec.target if job is None or rec.job is job else job.version
        self.events.emit(
            JobEvent(
                job_id=job.job_id if job else (rec.job_id or ""),
                status=status,
                ts=self.events.clock(),
                phase=rec.phase.value,
                step=step,
                detail=detail,
                reason=reason,
                origin=job.origin if job else None,
                model=target.name if target else None,
                version=target.version if target else None,
            )
        )

    def _fail(self, reason: str, *, rejected: bool = False, code: str | None = None) -> None:
        """ERROR from the current state, then report and RESET when it ends in FAILED.

        A rejection's reason starts with its code (``downgrade: ...``), as statuses carry it."""
        if rejected:
            reason = f"{code or 'malformed'}: {reason}"
        state = self._advance(Event.ERROR, reason=reason, rejected=rejected)
        if state is State.ROLLING_BACK:
            self._finish_rollback(reason)
            return
        self._advance(Event.RESET)

    # ------------------------------------------------------------------ start-up

    def boot(self, seed: Path | None = None) -> LoadedModel:
        """Finish or undo what a crash interrupted, seed an empty store, load ``current``.

        Raises ``BundleError`` when no version can be served."""
        self._migrate_pin()
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
        elif seed is not None:
            log.info("the store serves %s; --model only seeds an empty store", self.store.current())
        model = self._load_serving()
        self.swapper.adopt(model)
        return model

    def _migrate_pin(self) -> None:
        """A ``pin.json`` from an older agent becomes the record's pin."""
        old = self.store.root / "pin.json"
        if not old.exists():
            return
        try:
            data = json.loads(old.read_bytes())
            v = self.store.get(str(data["name"]), int(data["version"]), str(data["sha256"]))
        except (OSError, ValueError, KeyError, TypeError, EdgeAgentError) as err:
            log.warning("%s is unreadable (%s): the pin is dropped; pin again", old, err)
            v = None
        if v is not None and self.machine.pin is None:
            self.machine.set_pin(v.to_ref())
        old.unlink(missing_ok=True)

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
            if action is Action.RESUME_FETCH:
                job = self.machine.record.job
                assert job is not None
                self._resume_job = job  # the worker runs it on from FETCHING
                return
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
                verdict = self.machine.record.verdict
                why = verdict or f"restarted {self.machine.record.attempts} times in {phase.value}"
                self._advance(Event.ERROR, reason=why)
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
        self.swapper.handle = handle
        self.swapper.attach(call_between_frames)

    # ------------------------------------------------------------------ service

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        p = self._probation
        if p is not None:
            p.done.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.swapper.close()

    def _next_job(self) -> UpdateJob | None:
        with self._cond:
            while not self._stopping.is_set():
                if self._resume_probation:
                    return None
                if self._resume_job is not None:
                    self._running = self._resume_job.job_id
                    return self._resume_job
                wait: float | None = None
                if self.machine.state is State.IDLE:
                    job, wait = self._runnable()
                    if job is not None:
                        self._running = job.job_id
                        return job
                self._cond.wait(wait)
            return None

    def held(self) -> str | None:
        """Why deploy jobs wait now (a hold, or outside the update window), or None."""
        if self.machine.record.hold:
            return "installs are on hold (`edge-agent updates release` resumes them)"
        if self.window is not None and not self.window.contains(self.local_now()):
            return f"outside the update window {self.window}"
        return None

    def _runnable(self) -> tuple[UpdateJob | None, float | None]:
        """The first queued job that may run now, else how long to wait before looking again."""
        queue = self.machine.queue
        held = self.held() if any(j.action == "deploy" for j in queue) else None
        for job in queue:
            if job.action != "deploy" or held is None:
                return job, None
        if not queue:
            return None, None
        if self.machine.record.hold or self.window is None:
            return None, WINDOW_POLL_S
        return None, max(0.05, min(WINDOW_POLL_S, self.window.seconds_until_open(self.local_now())))

    def _work(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            job = self._next_job()
            if self._stopping.is_set():
                return
            ok = False
            stuck: Exception | None = None
            try:
                if job is None:  # boot found a job in ACTIVATING/PROBATION
                    self._resume_probation = False
                    self._probation_step(resumed=True)
                elif job is self._resume_job:  # boot found a download in FETCHING
                    self._resume_job = None
                    self._run_job(job, resumed=True)
                else:
                    self._run_job(job)
                ok = True
            except TransientError as err:  # the state file cannot be written (disk full, I/O)
                log.error("update job %s paused: %s", job.job_id if job else "resumed", err)
                stuck = err
            except Exception as err:  # a bug in a step: record it on the job, keep serving
                log.exception("update job %s failed unexpectedly", job.job_id if job else "resumed")
                self._record_internal_error(err)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
            # the job stays queued (or its state stays on disk): retry it after a back-off,
            # never in a tight loop and never by letting this thread die
            backoff = 0.0 if ok else min(60.0, max(1.0, backoff * 2))
            if backoff:
                self._stopping.wait(backoff)
            if stuck is not None and not self._stopping.is_set() and self.machine.state is not State.IDLE:
                # the job left the queue but its state is mid-way: end it (FAILED, or a rollback
                # after ACTIVATING) instead of leaving it IN_PROGRESS until the next start
                self._record_internal_error(stuck)

    def _record_internal_error(self, err: Exception) -> None:
        try:
            if self.machine.state is not State.IDLE:
                self._fail(f"internal error: {type(err).__name__}: {err}")
        except EdgeAgentError as err2:  # the failure cannot be recorded now: the back-off retries
            log.error("could not record the failure (%s); retrying later", err2)

    def idle(self) -> bool:
        return (
            self._running is None
            and not self.machine.queue
            and self.machine.state is State.IDLE
            and not self._resume_probation
            and self._resume_job is None
        )

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running (tests, benchmarks)."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self.idle():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # ------------------------------------------------------------------ requests

    def _enqueue(self, job: UpdateJob) -> str:
        with self._cond:
            if not self.machine.enqueue(job):
                raise RequestError(f"job {job.job_id} was seen already (replay)", 409)
            self._emit(JobStatus.QUEUED, job=job, reason=job.describe())
            self._cond.notify_all()
        return job.job_id

    def submit_job(
        self, job: UpdateJob, *, marks: tuple[str, ...] = (), trusted_time: float | None = None
    ) -> str:
        """Queue a job made elsewhere (a verified MQTT job): persisted with its ``marks``
        (the nonce) before QUEUED is reported; ``RequestError`` 409 for a replay."""
        with self._cond:
            if not self.machine.enqueue(job, marks=marks, trusted_time=trusted_time):
                raise RequestError(f"job {job.job_id} was seen already (replay)", 409)
            self._emit(JobStatus.QUEUED, job=job, reason=self.held() if job.action == "deploy" else None)
            self._cond.notify_all()
        return job.job_id

    def set_hold(self, hold: bool) -> dict[str, Any]:
        """Pause (or resume) installs; queued deploy jobs wait, verified and persisted."""
        with self._cond:
            self.machine.set_hold(hold)
            self._cond.notify_all()
        for listener in list(self.phase_listeners):  # the fleet's retained state shows the hold
            listener(self.machine.state)
        return {"message": "installs on hold" if hold else "installs released", "hold": hold}

    def submit(self, path: Path, origin: str = "drop-folder") -> str:
        """Queue a candidate bundle (folder, .tar.gz or bare model file); returns the job id.

        A path already queued or running (the watcher's first rescan after a restart offers
        the drops of persisted jobs again) is that job, not a second one."""
        with self._cond:
            rec = self.machine.record
            running = [rec.job] if rec.job is not None and rec.phase is not State.IDLE else []
            for j in (*running, *rec.queue):
                if j.action == "deploy" and j.source == str(path):
                    return j.job_id
            job = UpdateJob(new_job_id(origin), "deploy", origin, time.time(), source=str(path))
            return self._enqueue(job)

    def on_candidate(self, path: Path) -> None:
        """The ``DropFolderWatcher`` callback."""
        self.submit(path, "drop-folder")

    def activate(self, version: int, name: str | None = None, force: bool = False) -> dict[str, Any]:
        cur = self.store.current()
        name = name or (cur.name if cur else None)
        candidates = [v for v in self.store.versions(name) if v.version == version]
        if not candidates:
            raise RequestError(
                f"no version {version} of {name} in the store: see `edge-agent models list`", 404
            )
        stored = candidates[-1]
        refusal = self._refusal(stored, force=force)
        if refusal:
            raise RequestError(refusal[1], 409)
        if force:
            log.warning(
                "forced activation of %s (the pin, downgrade and release-counter rules skipped)", stored
            )
        job = UpdateJob(
            new_job_id("activate"), "activate", "control", time.time(), version=stored.to_ref(), force=force
        )
        self._enqueue(job)
        return {"message": f"activating {stored} (job {job.job_id})", "job_id": job.job_id}

    def rollback(
        self, force: bool = False, *, job_id: str | None = None, origin: str = "control"
    ) -> dict[str, Any]:
        """Back to the previous version: at once for a version on probation, else as a job."""
        with self._lock:
            p = self._probation
            if (
                p is not None
                and p.verdict is None
                and self._conclude(
                    p,
                    fail(
                        "manual rollback requested"
                        if origin == "control"
                        else f"rollback requested ({origin})"
                    ),
                )
            ):
                return {"message": f"rolling back {p.candidate.name} v{p.candidate.version} (on probation)"}
            cur, prev = self.store.current(), self.store.previous()
            pending = p is not None and p.verdict is not None and p.verdict.decision is Decision.PASS
            if not pending and (prev is None or prev == cur):
                raise RequestError("no previous version to roll back to", 409)
            pin = self.machine.pin
            if pin is not None and not force:
                raise RequestError(
                    f"{pin.name} v{pin.version} is pinned: unpin it (`edge-agent models unpin`) "
                    "or use --force",
                    409,
                )
            job = UpdateJob(job_id or new_job_id("rollback"), "rollback", origin, time.time(), force=force)
            self._enqueue(job)
        return {"message": f"rolling back (job {job.job_id})", "job_id": job.job_id}

    def pin(self, version: int | None) -> dict[str, Any]:
        with self._lock:
            return self._pin(version)

    def _pin(self, version: int | None) -> dict[str, Any]:
        if self.machine.state is not State.IDLE:
            raise RequestError(
                f"an update is in progress ({self.machine.state.value}): pin once it has ended "
                "(`edge-agent status`), so the pin names the version that serves",
                409,
            )
        cur = self.store.current()
        target = cur
        if version is not None:
            matches = [v for v in self.store.versions(cur.name if cur else None) if v.version == version]
            if not matches:
                raise RequestError(f"no version {version} in the store", 404)
            target = matches[-1]
        if target is None:
            raise RequestError("nothing to pin: no current version", 409)
        self.machine.set_pin(target.to_ref())
        return {"message": f"pinned {target}"}

    def unpin(self) -> dict[str, Any]:
        with self._lock:
            self.machine.set_pin(None)
        return {"message": "unpinned"}

    # ------------------------------------------------------------------ jobs

    def _reject_queued(self, job: UpdateJob, code: str, reason: str) -> None:
        """A queued job refused before it started: nothing changed."""
        self.machine.drop_queued(job.job_id)
        self._emit(JobStatus.REJECTED, job=job, reason=f"{code}: {reason}")

    def _run_job(self, job: UpdateJob, *, resumed: bool = False) -> None:
        if job.expires_at is not None and not resumed:
            judge = max(time.time(), self.machine.record.counters.last_trusted_time)
            if judge >= job.expires_at:  # it waited (a hold, the window) past its expiry
                self._reject_queued(job, "expired", "the job expired while it waited in the queue")
                return
        if job.action == "rollback":
            with self._lock:
                cur, prev = self.store.current(), self.store.previous()
                pin = self.machine.pin
                if pin is not None and not job.force:
                    self._reject_queued(job, "pinned", f"{pin.name} v{pin.version} is pinned")
                    return
                if prev is None or prev == cur:
                    self._reject_queued(job, "not_applicable", "no previous version to roll back to")
                    return
                # "previous" is always where a rollback goes; "target" is what it leaves
                self._advance(
                    Event.ROLLBACK,
                    job_id=job.job_id,
                    job=job,
                    target=cur.to_ref() if cur else None,
                    previous=prev.to_ref(),
                    reason="manual rollback" + (" (forced)" if job.force else ""),
                )
                self._finish_rollback("manual rollback")
            return
        if job.action == "activate":
            stored = self._stored(job.version)
            refusal = (
                ("not_applicable", "the version is not in the store any more")
                if stored is None
                else self._refusal(stored, force=job.force)
            )
            if refusal or stored is None:
                code, why = refusal or ("not_applicable", "not in the store")
                self._reject_queued(job, code, why)
                return
            self._advance(
                Event.SELECT,
                job_id=job.job_id,
                job=job,
                target=stored.to_ref(),
                previous=self._current_ref(),
                reason="explicit activation" + (" (forced)" if job.force else ""),
            )
        else:
            got = self._fetch_and_import(job, resumed=resumed)
            if got is None:
                return
            stored = got
            refusal = self._refusal(stored, force=job.force)
            if refusal:
                self._fail(refusal[1], rejected=True, code=refusal[0])
                return
            self._advance(Event.VERIFIED, target=stored.to_ref())
        self._advance(Event.STORED)
        report = self._validate(stored, isolated=self.policy.isolate_validation)
        if not report.ok:
            self._fail(f"validation failed: {report.reason}")
            return
        self.machine.set_baseline(self._baseline())  # on disk before ACTIVATING: a resumed probation needs it
        self._advance(Event.VALIDATED, reason=f"validated (median {report.latency_p50_ms:.1f} ms)")
        try:
            with self._lock:
                self.swapper.activate(stored.path)
                self.store.set_current(stored)
        except EdgeAgentError as err:  # SwapError (a serving model is restored), or the pointers
            self._fail(f"activation failed: {err}")
            return
        self._advance(Event.ACTIVATED)
        self._probation_step(resumed=False)

    def _fetch_and_import(self, job: UpdateJob, *, resumed: bool) -> StoredVersion | None:
        """FETCHING and VERIFYING of a deploy: the bundle in the store, or None (reported)."""
        assert job.source is not None
        if not resumed:
            self._advance(
                Event.START,
                job_id=job.job_id,
                job=job,
                previous=self._current_ref(),
                reason=f"{job.origin}: {job.source if job.remote else Path(job.source).name}",
            )
        if job.remote:
            if self.fetcher is None:
                self._fail(
                    "this agent has no downloader for remote bundles",
                    rejected=True,
                    code="unsupported_action",
                )
                return None
            staging = self.store.staging_dir / job.job_id
            try:
                path = self.fetcher(job, staging, self._stopping.wait)
            except Rejected as err:
                self.store.discard_staging(job.job_id)
                self._fail(str(err), rejected=True, code=err.reason)
                return None
            except TransientError as err:
                if self._stopping.is_set():  # FETCHING stays on disk: the next start resumes
                    log.info("job %s: download paused by the stop; it resumes at the next start", job.job_id)
                    return None
                self.store.discard_staging(job.job_id)
                self._fail(f"download failed: {err}")
                return None
            except EdgeAgentError as err:  # a 4xx, other bytes than declared, a bad manifest
                self.store.discard_staging(job.job_id)
                self._fail(f"download failed: {err}")
                return None
            if self._stopping.is_set():  # stopping: FETCHING stays on disk, the next start resumes
                return None
            import_id = f"{job.job_id}.import"
        else:
            path = Path(job.source)
            import_id = job.job_id
        self._advance(Event.FETCHED)
        try:
            stored = self.store.import_bundle(path, import_id, check=self.bundle_check)
        except TransientError as err:  # the bundle may be fine: leave it where it is
            self._fail(f"could not import {path.name} ({err}); the bundle is left in place")
            return None
        except EdgeAgentError as err:
            if job.remote:
                self.store.discard_staging(job.job_id)
            else:
                self._dispose(path, rejected=True)
            code = err.reason if isinstance(err, Rejected) else "malformed"
            self._fail(f"rejected {path.name}: {err}", rejected=True, code=code)
            return None
        if job.remote:
            self.store.discard_staging(job.job_id)
        else:
            self._dispose(path, rejected=False)
        return stored

    def _current_ref(self) -> VersionRef | None:
        cur = self.store.current()
        return None if cur is None else cur.to_ref()

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

    def _refusal(self, stored: StoredVersion, *, force: bool) -> tuple[str, str] | None:
        """(code, why) the rules refuse ``stored`` (pin, already serving, downgrade, release counter)."""
        cur = self.store.current()
        if cur is not None and cur == stored:
            return "not_applicable", f"{stored} is already serving"
        if force:
            return None
        pin = self.machine.pin
        if pin is not None:
            return "pinned", (
                f"{pin.name} v{pin.version} is pinned: unpin it (`edge-agent models unpin`) to let "
                f"{stored} replace it, or use --force"
            )
        if cur is not None and cur.name == stored.name and not self.policy.allow_downgrade:
            last = max(cur.version, self.machine.last_version(stored.name) or 0)
            same_as_serving = stored.version == cur.version and stored.sha256 != cur.sha256
            if stored.version < last or same_as_serving:
                return "downgrade", (
                    f"downgrade refused: {stored} is not newer than v{last}; use "
                    f"`edge-agent models activate {stored.version} --force` or run with --allow-downgrade"
                )
        rc = stored.release_counter
        if rc is not None and rc < self.machine.max_release_counter:
            return "downgrade", (
                f"release counter {rc} is lower than {self.machine.max_release_counter} (replay or "
                "downgrade); use --force to install it anyway"
            )
        return None

    def _validate(self, stored: StoredVersion, *, isolated: bool) -> ValidationReport:
        frames = list(self._recent_frames)
        if isolated:
            return validate_isolated(stored.path, frames, self.policy.validation, self.options)
        return validate(stored.path, frames, self.policy.validation, self.options)

    def _baseline(self) -> Baseline:
        """The serving version's recent figures: what the candidate's probation compares with."""
        conf = list(self._recent_conf)
        det = list(self._recent_det)
        return Baseline(
            confidence=(sum(conf) / len(conf)) if len(conf) >= 10 else None,
            detection_rate=(sum(det) / len(det)) if len(det) >= 10 else None,
        )

    # ------------------------------------------------------------------ probation

    def probation_policy(self, model: LoadedModel, baseline: Baseline) -> ProbationPolicy:
        """Config wins over the manifest, the manifest over the built-in defaults."""
        m = model.bundle.manifest
        mp: dict[str, Any] = dict(getattr(m, "probation", None) or {})
        mv: dict[str, Any] = dict(getattr(m, "validation", None) or {})
        pol = self.policy

        def pick(conf: Any, key: str, default: Any) -> Any:
            return conf if conf is not None else mp.get(key, default)

        budget = pol.latency_budget_ms if pol.latency_budget_ms is not None else mv.get("max_latency_ms")
        seconds = float(pick(pol.probation_seconds, "seconds", 0.0))
        return ProbationPolicy(
            min_frames=int(pick(pol.probation_frames, "frames", 100)),
            min_seconds=seconds,
            max_seconds=max(seconds, float(pick(pol.probation_max_seconds, "max_seconds", 600.0))),
            on_thin_evidence=str(pick(pol.on_thin_evidence, "on_thin_evidence", "rollback")),
            max_error_rate=float(pick(pol.max_error_rate, "max_error_rate", 0.05)),
            min_confidence_ratio=float(pick(pol.min_confidence_ratio, "min_confidence_ratio", 0.5)),
            latency_budget_ms=None if budget is None else float(budget),
            baseline=baseline,
        )

    def _probation_step(self, *, resumed: bool) -> None:
        cand = self.swapper.serving
        if resumed and self.policy.swap_policy == "availability":
            prev = self._stored(self.machine.record.previous)
            if prev is not None and prev != self.store.current():
                try:
                    self.swapper.standby = self.loader(prev.path, self.options, self.runtime)
                except EdgeAgentError as err:
                    log.warning("previous version %s cannot be kept warm: %s", prev, err)
        policy = self.probation_policy(cand, self.machine.record.baseline)
        p = _Probation(cand, policy, ProbationFigures(self.clock()))
        log.info(
            "probation of %s v%s: %d frames, %g s, deadline %g s",
            cand.name,
            cand.version,
            policy.min_frames,
            policy.min_seconds,
            policy.max_seconds,
        )
        with self._verdict_lock:
            self._probation = p
        try:
            while not p.done.wait(TICK_S):
                if self._stopping.is_set():
                    return
                self.check_probation(p)
        finally:
            with self._verdict_lock:
                self._probation = None
        if p.verdict is None:  # stopping: the state on disk (PROBATION) resumes at the next start
            return
        assert p.verdict is not None
        if p.verdict.decision is Decision.FAIL:
            self._finish_rollback(p.verdict.reason)
        else:
            self._advance(Event.PROBATION_PASSED, reason=p.verdict.reason or None)
            self._finish_commit()

    def check_probation(self, p: _Probation | None = None) -> Verdict | None:
        """Judge the probation now (the worker's tick; the results thread per result)."""
        p = p or self._probation
        if p is None or p.verdict is not None:
            return None
        now = self.clock()
        # the p95 (a sort, on the results thread) only once the evidence is complete
        need_latency = (
            p.figures.frames >= p.policy.min_frames and now - p.figures.started >= p.policy.min_seconds
        )
        verdict = p.policy.decide(p.figures.snapshot(latency=need_latency), now)
        if not verdict.final:
            return verdict
        if self.before_verdict is not None:
            self.before_verdict(verdict)
        self._conclude(p, verdict)
        return p.verdict

    def _conclude(self, p: _Probation, verdict: Verdict) -> bool:
        """Record the first verdict of a probation; a failure serves the standby at once."""
        with self._verdict_lock:
            if p.verdict is not None or self._probation is not p:
                return False
            p.verdict = verdict
            try:
                if verdict.decision is Decision.FAIL:
                    self._revert(p, verdict)
            finally:
                p.done.set()
            return True

    def _revert(self, p: _Probation, verdict: Verdict) -> None:
        """A failed verdict: the warm previous model serves the very next frame, then the
        verdict is on disk, so a crash before the worker's rollback still rolls back."""
        t0 = time.perf_counter()
        self.last_decision_at = time.monotonic()
        self._rejected = p.candidate
        self.results_after_verdict = 0
        swapped = self.swapper.revert_now()  # None with no standby (memory): the worker reloads
        self.last_rollback_ms = (time.perf_counter() - t0) * 1000.0 if swapped is not None else None
        log.error("probation of %s v%s failed: %s", p.candidate.name, p.candidate.version, verdict.reason)
        try:
            self.machine.record_verdict(verdict.reason)
        except TransientError as err:
            log.error("could not persist the failed verdict (%s): a crash now resumes probation", err)

    def _finish_commit(self) -> None:
        self.swapper.release_standby()
        pin = self.machine.pin
        try:
            self.store.gc(protect={identity(pin)} if pin is not None else frozenset())
        except EdgeAgentError as err:
            log.warning("gc after commit: %s", err)
        self._advance(Event.FINISHED)
        log.info("committed %s", self.store.current())

    def _finish_rollback(self, reason: str) -> None:
        """The persisted part of a rollback: ROLLING_BACK, pointers, serving model, FAILED, IDLE.

        The destination is the job's ``previous`` (what served before the job), whatever the
        ``previous`` pointer says, so a failure before the pointers moved goes nowhere."""
        with self._lock:
            if self.machine.state is not State.ROLLING_BACK:
                self._advance(Event.ERROR, reason=reason)
            ref = self.machine.record.previous
            dest = self._stored(ref)
            try:
                if dest is None:
                    raise BundleError(f"the version to roll back to ({ref}) is not in the store")
                if self.swapper.handle is not None:  # at boot the pipeline loads ``current`` itself
                    self.swapper.serve(dest.path, identity(dest))
                self._point_current_to(dest)  # after the swap: pointers name what serves
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

    # ------------------------------------------------------------------ sink hooks (results thread)

    def write(self, frame: Frame, result: Result, model: Any) -> None:
        """Called by the pipeline after every frame: recent figures and probation health."""
        self.swapper.on_result(model)
        if model is self._rejected:
            self.results_after_verdict += 1
        detector = result.kind == "detections"
        self._recent_conf.append(float(result.confidence))
        if detector:
            self._recent_det.append(1 if result.detections else 0)
        if frame.index % self._frame_every == 0:
            self._recent_frames.append(frame.image.copy())
        p = self._probation
        if p is None or p.verdict is not None or model is not p.candidate:
            return
        p.figures.add_result(
            frame=frame.index,
            confidence=float(result.confidence),
            finite=result.finite,
            inference_ms=result.inference_ms,
            detections=len(result.detections) if detector else None,
        )
        self.check_probation(p)

    def on_error(self, frame: Frame, model: Any, err: BaseException) -> None:
        """Called by the pipeline when a model's ``infer`` raised on a frame."""
        self.swapper.on_result(model)  # a frame of another model is done: retired ones may go
        p = self._probation
        if p is None or p.verdict is not None or model is not p.candidate:
            return
        p.figures.add_error()
        self.check_probation(p)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ status

    def healthy(self) -> str | None:
        """None while a loaded model serves; else why not (``/healthz``, the watchdog)."""
        if self.swapper.broken:
            return self.swapper.broken
        handle = self.swapper.handle
        if handle is not None and not is_loaded(handle.current):
            return f"{handle.current.name} v{handle.current.version} is not loaded"
        return None

    def status(self) -> dict[str, Any]:
        rec = self.machine.record
        prev = self.store.previous()
        pin = rec.pin
        p = self._probation
        return {
            "phase": rec.phase.value,
            "job_id": rec.job_id,
            "reason": rec.reason,
            "outcome": rec.outcome.value if rec.outcome else None,
            "previous": None
            if prev is None
            else {"name": prev.name, "version": prev.version, "sha256": prev.sha256},
            "pinned": None if pin is None else pin.version,
            "queued": [j.job_id for j in rec.queue],
            "last_job": self.last_job,
            "swap_policy": self.policy.swap_policy,
            "last_gap_ms": self.last_gap_ms,
            "probation": None
            if p is None
            else {
                "frames": p.figures.frames,
                "errors": p.figures.errors,
                "verdict": p.verdict.decision.value if p.verdict else None,
            },
            "no_model": self.swapper.broken,
            "hold": rec.hold,
            "window": None if self.window is None else str(self.window),
            "held": self.held(),
            "results_after_verdict": self.results_after_verdict,
        }

    def models(self) -> list[dict[str, Any]]:
        return store_models(self.store, self.machine.pin)


def store_models(store: ModelStore, pin: VersionRef | None) -> list[dict[str, Any]]:
    """The rows of ``models list`` (the control API, and the CLI when no agent runs)."""
    cur, prev = store.current(), store.previous()
    return [
        {
            "name": v.name,
            "version": v.version,
            "sha256": v.sha256,
            "path": str(v.path),
            "current": v == cur,
            "previous": v == prev,
            "pinned": pin is not None and identity(v) == identity(pin),
        }
        for v in store.versions()
    ]

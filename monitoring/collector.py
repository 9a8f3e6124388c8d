"""``Collector``: Sampler → (worker) JPEG, de-duplication, Spool → Uploader, off the hot path.

It is a pipeline sink. ``write`` runs on the results thread for every frame and only decides:
the ``Sampler`` names the strategy that takes the frame (or none), and a taken frame, with its
result, goes to the collector's own worker thread through a bounded queue. A full queue drops
the frame and counts it (``queue_dropped``) and gives its quota slot back; with a file or
folder source (``lossless``) the sink waits instead, so the same files keep the same frames.

The worker shrinks the frame to ``max_side``, hashes it (``phash64``) and drops it when a
frame kept in the last ``dedup_window`` is within ``dedup_bits`` (``duplicates``: a static
scene is kept once per window, not a thousand times), encodes the JPEG, charges the daily
byte budget and puts it in the ``Spool`` with its sidecar (``sidecar``: device, model,
version, strategy, scores, frame statistics, ts, and the model's detections, classes or text as
pre-labels, in the JPEG's pixels), then wakes the uploader.

``capture(n)`` (the fleet's ``capture`` command) keeps the next ``n`` frames whatever the
strategies, quotas and de-duplication say, under the strategy name ``capture``.
``set_policy`` (the fleet's ``sampling`` command) replaces the policy between two frames; it
is saved in ``<state>/sampling-policy.json`` and wins over the config file at the next start
(delete the file to go back to the config). The quota counts and the day's bytes are saved in
``<state>/sampling-quota.json`` (at most every ``QUOTA_SAVE_S`` and at stop) and taken back at
the next start for the strategies that are unchanged, so an agent that restarts does not keep
``per_day`` again. ``collected_frames(t0, t1)`` gives the sha256 of
the frames kept between two times: a drift alert names them as its evidence.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import ConfigError, EdgeAgentError
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_bytes
from inference.result import Result
from monitoring.frame_stats import FrameStats
from monitoring.phash import RecentHashes, phash64
from monitoring.sampler import Sampler, result_measure
from monitoring.sampling_policy import SamplingPolicy, parse_policy
from monitoring.spool import Spool

log = logging.getLogger(__name__)

Clock = Callable[[], float]
POLICY_FILE = "sampling-policy.json"
QUOTA_FILE = "sampling-quota.json"
QUOTA_SAVE_S = 10.0
CAPTURE = "capture"
MAX_CAPTURE = 1000
MAX_RECENT = 4096  # kept frames remembered for collected_frames
MAX_PRELABELS = 100  # detections or classes written in a sidecar
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class _Active:
    """The policy in force and what is made from it; replaced whole between two frames."""

    policy: SamplingPolicy
    sampler: Sampler
    dedup: RecentHashes
    origin: str  # "config" or "fleet job <id>"
    has_drift: bool  # a drift strategy: only then is the drift monitor asked, once a frame


class PolicyFile:
    """The fleet's policy on disk: ``{"job_id", "set_at", "sampling": {...}}``, written atomically."""

    def __init__(self, state_dir: Path, fs: FsOps = DEFAULT_FS) -> None:
        self.path = Path(state_dir) / POLICY_FILE
        self.fs = fs

    def load(self) -> tuple[SamplingPolicy, str] | None:
        """The saved policy and the job that set it, or None when there is none. A file that
        does not parse is a ConfigError naming it (the agent refuses to guess)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}; fix or delete it") from None
        try:
            obj = json.loads(raw)
        except ValueError:
            raise ConfigError(
                f"{self.path}: not JSON; delete it to go back to [sampling] in the config"
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("sampling"), dict):
            raise ConfigError(f'{self.path}: no "sampling" object; delete it to go back to the config')
        policy = parse_policy(obj["sampling"], f"{self.path}: sampling")
        return policy, str(obj.get("job_id", "?"))

    def save(self, policy: SamplingPolicy, job_id: str, now: float) -> None:
        body = {"job_id": job_id, "set_at": now, "sampling": policy.to_dict()}
        atomic_write_bytes(self.path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), self.fs)


def _shrink(image: npt.NDArray[np.uint8], max_side: int) -> tuple[npt.NDArray[np.uint8], float]:
    h, w = image.shape[:2]
    side = max(h, w)
    if max_side <= 0 or side <= max_side:
        return image, 1.0
    scale = max_side / side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return small, scale


def prelabels(result: Result, scale: float) -> dict[str, Any]:
    """The model's answer as pre-labels, boxes in the kept JPEG's pixels."""
    if result.kind == "detections":
        dets = sorted(result.detections, key=lambda d: -d.score)[:MAX_PRELABELS]
        return {
            "detections": [
                {
                    "label": d.label,
                    "score": round(float(d.score), 5),
                    "box": [round(float(v) * scale, 1) for v in d.box],
                }
                for d in dets
            ]
        }
    if result.kind == "classes":
        classes = sorted(result.classes, key=lambda c: -c.score)[:MAX_PRELABELS]
        return {"classes": [{"label": c.label, "score": round(float(c.score), 5)} for c in classes]}
    if result.kind == "text":
        return {"texts": [x.to_json() for x in result.texts[:MAX_PRELABELS]]}
    return {}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 5)


class Collector:
    """See the module docstring. A pipeline sink (``write``) and a service (``start``/``stop``)."""

    def __init__(
        self,
        policy: SamplingPolicy,
        spool: Spool,
        *,
        device: str,
        rng: np.random.Generator | None = None,
        clock: Clock = time.time,
        lossless: bool = False,
        drifted: Callable[[], bool] | None = None,
        on_spooled: Callable[[], None] | None = None,
        policy_file: PolicyFile | None = None,
        policy_origin: str = "config",
        frame_stats: FrameStats | None = None,
        quota_file: Path | None = None,
        fs: FsOps = DEFAULT_FS,
    ) -> None:
        """``quota_file``: where the quota counts survive a restart (None: they do not)."""
        self.spool = spool
        self.device = device
        self.clock = clock
        self.lossless = lossless
        self.drifted = drifted
        self.on_spooled = on_spooled
        self.policy_file = policy_file
        self.frame_stats = frame_stats or FrameStats()
        self._rng = rng if rng is not None else np.random.default_rng()
        self._policy_lock = threading.Lock()
        # replaced whole (never changed in place); the results thread reads it once a frame
        self._active = self._make(policy, policy_origin)
        self.quota_file = quota_file
        self.fs = fs
        self._quota_saved_at = -math.inf
        if quota_file is not None:
            self._restore_quota(quota_file)
        # results thread
        self.frames = 0
        self.queue_dropped = 0
        # worker thread
        self.kept = 0
        self.kept_bytes = 0
        self.kept_by: dict[str, int] = {}
        self.duplicates = 0
        self.spool_refused = 0  # a full disk, an I/O error, a frame bigger than the quota
        self.encode_failed = 0
        self.failures = 0  # bugs, logged with their traceback
        self.last_error: str | None = None
        self._recent: deque[tuple[float, str]] = deque(maxlen=MAX_RECENT)
        self._capture_left = 0
        self._capture_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[Any, ...]] = deque()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._log_at: dict[str, float] = {}

    def _make(self, policy: SamplingPolicy, origin: str) -> _Active:
        return _Active(
            policy,
            Sampler(policy.strategies, rng=self._rng, clock=self.clock, daily_bytes=policy.daily_bytes),
            RecentHashes(policy.dedup_bits, policy.dedup_window_s, self.clock),
            origin,
            self.drifted is not None and any(s.kind == "drift" for s in policy.strategies),
        )

    @property
    def policy(self) -> SamplingPolicy:
        return self._active.policy

    @property
    def sampler(self) -> Sampler:
        return self._active.sampler

    # ------------------------------------------------------------------ results thread (a sink)

    def write(self, frame: Any, result: Result, model: Any) -> None:
        """Decide (O(1) per strategy) and hand a taken frame to the worker; never waits unless
        the source is ``lossless``."""
        self.frames += 1
        active = self._active
        policy, sampler = active.policy, active.sampler
        name: str | None
        if self._capture_left > 0 and self._take_capture():
            name = CAPTURE
        else:
            drifted = active.has_drift and self.drifted is not None and self.drifted()
            name = sampler.select(result, drifted=drifted)
            if name is None:
                return
        with self._cond:
            if self.lossless:
                while len(self._queue) >= policy.queue and self._alive():
                    self._cond.wait(0.5)
            if len(self._queue) >= policy.queue:
                self.queue_dropped += 1
                if name != CAPTURE:
                    sampler.release(name)
                return
            self._queue.append((frame, result, model, name, active))
            self._cond.notify_all()

    def _take_capture(self) -> bool:
        with self._capture_lock:
            if self._capture_left <= 0:
                return False
            self._capture_left -= 1
            return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ fleet commands

    def set_policy(self, table: Mapping[str, Any], *, job_id: str) -> str:
        """Replace the policy (the fleet's ``sampling`` command): checked as ``[sampling]`` is,
        saved, then in force from the next frame. ConfigError names the bad key."""
        policy = parse_policy(table, f"job {job_id}: sampling")
        with self._policy_lock:
            if self.policy_file is not None:
                try:
                    self.policy_file.save(policy, job_id, self.clock())
                except OSError as exc:
                    raise EdgeAgentError(
                        f"the sampling policy could not be saved to {self.policy_file.path}: "
                        f"{exc.strerror or exc}; it was not applied"
                    ) from None
            old_sampler = self.sampler
            active = self._make(policy, f"fleet job {job_id}")
            # the same strategies keep what they took today: re-sending a policy resets nothing
            active.sampler.restore(old_sampler.snapshot())
            self._active = active
        names = ", ".join(s.name for s in policy.strategies)
        log.info("sampling policy from fleet job %s: %s", job_id, names)
        return f"sampling policy set: {len(policy.strategies)} strategy(ies): {names}"

    def capture(self, frames: int, *, job_id: str) -> str:
        """Keep the next ``frames`` frames whatever the policy says (the fleet's ``capture``)."""
        if not 1 <= frames <= MAX_CAPTURE:
            raise ConfigError(f"job {job_id}: capture frames must be 1-{MAX_CAPTURE}, got {frames}")
        with self._capture_lock:
            self._capture_left = frames
        log.info("fleet job %s: capturing the next %d frame(s)", job_id, frames)
        return f"capturing the next {frames} frame(s)"

    # ------------------------------------------------------------------ service

    def start(self) -> Collector:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Spool what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the frame collector did not stop within %.0f s", timeout)
                return
        self.save_quota(force=True)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued frame has been handled (tests, benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._queue or self._busy), timeout)

    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    break
                item = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()
            try:
                self._keep(*item)
            except Exception:  # a bug here: logged whole; the camera loop and this worker go on
                self.failures += 1
                self._log(
                    "bug", logging.ERROR, "frame collection failed (%d so far)", self.failures, exc=True
                )
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # ------------------------------------------------------------------ worker thread

    def _keep(self, frame: Any, result: Result, model: Any, name: str, active: _Active) -> None:
        policy, sampler, dedup = active.policy, active.sampler, active.dedup
        capture = name == CAPTURE
        image, scale = _shrink(frame.image, policy.max_side)
        h = phash64(image)
        now = self.clock()
        if not capture and dedup.seen(h, now):
            self.duplicates += 1
            sampler.release(name)
            return
        try:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, policy.jpeg_quality])
        except cv2.error as exc:
            ok, buf = False, None
            self.last_error = f"JPEG encoding failed: {exc}"
        if not ok or buf is None:
            self.encode_failed += 1
            if not capture:
                sampler.release(name)
            self._log(
                "encode",
                logging.WARNING,
                "a frame could not be encoded as JPEG (%d so far)",
                self.encode_failed,
            )
            return
        jpeg = buf.tobytes()
        if not capture:
            sampler.charge(len(jpeg))
        meta = self.sidecar(frame, result, model, name, image, scale, h)
        try:
            item = self.spool.put(jpeg, meta)
        except EdgeAgentError as err:  # a full disk or an I/O error (the spool counts it too)
            self.spool_refused += 1
            self.last_error = str(err)
            self._log("spool", logging.WARNING, "a kept frame was not spooled: %s", err)
            return
        if item is None:  # bigger than the whole quota
            self.spool_refused += 1
            return
        if not capture:
            dedup.add(h, now)
        self.kept += 1
        self.kept_bytes += len(jpeg)
        self.kept_by[name] = self.kept_by.get(name, 0) + 1
        self._recent.append((float(frame.ts), item.sha256))
        if self.on_spooled is not None:
            self.on_spooled()
        if not capture:
            self.save_quota()

    def sidecar(
        self,
        frame: Any,
        result: Result,
        model: Any,
        strategy: str,
        image: npt.NDArray[np.uint8],
        scale: float,
        phash: int,
    ) -> dict[str, Any]:
        """What a labeller needs beside the JPEG (DESIGN §8)."""
        stats = self.frame_stats.image(self.frame_stats.thumbnail(frame.image))
        h, w = frame.image.shape[:2]
        meta: dict[str, Any] = {
            "device": self.device,
            "ts": float(frame.ts),
            "frame": int(frame.index),
            "strategy": strategy,
            "model": {"name": model.name, "version": int(model.version), "sha256": model.sha256},
            "kind": result.kind,
            "scores": {m: _finite(result_measure(result, m)) for m in ("confidence", "margin", "entropy")},
            "stats": {k: _finite(v) for k, v in sorted(stats.items())},
            "image": {
                "width": image.shape[1],
                "height": image.shape[0],
                "source_width": w,
                "source_height": h,
            },
            "phash": f"{phash:016x}",
        }
        meta.update(prelabels(result, scale))
        return meta

    # ------------------------------------------------------------------ quota across restarts

    def _restore_quota(self, path: Path) -> None:
        try:
            snap = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("sampling quota counts in %s cannot be read (%s); starting them afresh", path, exc)
            return
        if isinstance(snap, dict):
            try:
                n = self.sampler.restore(snap)
            except (TypeError, ValueError, AttributeError) as exc:  # our own file, but edited or cut
                log.warning("sampling quota counts in %s are malformed (%s); starting them afresh", path, exc)
                return
            if n:
                log.info("sampling quota counts of %d strategy(ies) taken back from %s", n, path)

    def save_quota(self, *, force: bool = False) -> None:
        """Save the quota counts (at most every ``QUOTA_SAVE_S`` unless ``force``)."""
        if self.quota_file is None:
            return
        now = time.monotonic()
        if not force and now - self._quota_saved_at < QUOTA_SAVE_S:
            return
        self._quota_saved_at = now
        body = (json.dumps(self.sampler.snapshot(), sort_keys=True) + "\n").encode()
        try:
            atomic_write_bytes(self.quota_file, body, self.fs)
        except OSError as exc:  # a full disk: the counts start afresh after a restart, said once a minute
            self._log("quota", logging.WARNING, "sampling quota counts not saved: %s", exc)

    def _log(self, key: str, level: int, msg: str, *args: Any, exc: bool = False) -> None:
        now = time.monotonic()
        if now - self._log_at.get(key, -math.inf) >= LOG_EVERY_S:
            self._log_at[key] = now
            log.log(level, msg, *args, exc_info=exc)

    # ------------------------------------------------------------------ reading

    def collected_frames(self, t0: float, t1: float) -> Sequence[str]:
        """The sha256 of the frames kept with a capture time in [t0, t1]."""
        return [sha for ts, sha in list(self._recent) if t0 <= ts <= t1]

    def status(self) -> dict[str, Any]:
        active = self._active
        policy, sampler = active.policy, active.sampler
        return {
            "policy": active.origin,
            "strategies": [s.name for s in policy.strategies],
            "frames": self.frames,
            "taken": dict(sampler.taken),
            "over_quota": dict(sampler.over_quota),
            "over_budget": sampler.over_budget,
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "kept_by": dict(self.kept_by),
            "duplicates": self.duplicates,
            "queue_dropped": self.queue_dropped,
            "spool_refused": self.spool_refused,
            "encode_failed": self.encode_failed,
            "failures": self.failures,
            "capture_left": self._capture_left,
            "last_error": self.last_error,
        }

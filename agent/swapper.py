"""``Swapper``: owns the lifetime of every loaded model, under one lock.

It loads, warms, swaps, keeps warm, unloads and reloads; the ``ModelManager`` decides *what*
should serve and asks the swapper to make it so. Its invariant, tested by injecting a
failure at every step of every path of both policies (tests/test_swapper.py):

    after any failure, the next frame is served by a loaded model that was verified when it
    was loaded; and if no model can be loaded at all, ``broken`` says why, the handle
    serves a ``NoModel`` whose every frame fails with that reason, ``/healthz`` fails and
    the watchdog stops, so systemd restarts the agent.

Policies (DESIGN §3):

- ``availability``: ``activate`` loads and warms the candidate beside the serving model and
  swaps the handle between two frames; the replaced model stays loaded as the *standby*
  through probation, so ``revert_now`` (a rejected candidate) is a reference swap made on the
  spot. ``release_standby`` unloads it after the commit.
- ``memory`` (devices that cannot hold two models): between two frames, on the inference
  thread, unload the serving model, load and warm the candidate, swap; the gap is measured
  (``last_gap_ms``). When the load or warm-up fails, the model that was unloaded is loaded
  again before the next frame.

Replaced models are unloaded only once no frame can still use them: results are written in
frame order, so the first result of another model proves it (``on_result``); the unload
runs on a short-lived thread, since freeing a runtime holds the GIL for milliseconds.

``faults`` is called with the name of each step before it runs ("load", "warm", "unload",
"reload", "swap"): the fault points the tests inject failures through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.config import SWAP_POLICIES
from agent.handle import ModelHandle
from inference.errors import ConfigError, EdgeAgentError, FatalError
from inference.model import LoadedModel
from inference.result import Result

log = logging.getLogger(__name__)

Loader = Callable[[Path], LoadedModel]
Image = npt.NDArray[np.uint8]


class SwapError(EdgeAgentError):
    """A swap failed; the model named by ``serving`` serves the next frame (it was loaded and
    verified), or nothing can serve and the swapper is ``broken``."""


class NoModel(LoadedModel):
    """What the handle holds when no model can be loaded: every frame fails with the reason."""

    def __init__(self, reason: str, name: str = "none", version: int = 0) -> None:  # no super(): no runtime
        self.name = name
        self.version = version
        self.sha256 = ""
        self.reason = reason
        self._closed = True
        self._lock = threading.Lock()

    def infer(self, image: Image) -> Result:
        raise FatalError(f"no model is loaded: {self.reason}")

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"NoModel({self.reason})"


def _close_all(models: list[LoadedModel]) -> None:
    for m in models:
        try:
            m.close()
        except Exception:  # an unload that fails leaks memory; it cannot affect what serves
            log.exception("unloading %s failed", m)


def is_loaded(model: LoadedModel) -> bool:
    return not getattr(model, "_closed", False)


class Swapper:
    def __init__(
        self,
        loader: Loader,
        *,
        policy: str = "availability",
        warmup_runs: int = 2,
        warm_frame: Callable[[], Image | None] = lambda: None,
        faults: Callable[[str], None] = lambda step: None,
    ) -> None:
        if policy not in SWAP_POLICIES:
            raise ConfigError(f"swap policy {policy!r}: use one of {', '.join(SWAP_POLICIES)}")
        self.loader = loader
        self.policy = policy
        self.warmup_runs = warmup_runs
        self.warm_frame = warm_frame
        self.faults = faults
        self.handle: ModelHandle | None = None
        self.standby: LoadedModel | None = None  # availability: the replaced model, kept warm
        self.broken: str | None = None  # why no model can serve, when none can
        self.last_gap_ms: float | None = None
        self._lock = threading.RLock()
        self._between_frames: Callable[[Callable[[], object]], None] | None = None
        self._retiring: list[LoadedModel] = []
        self._retire_lock = threading.Lock()

    # ------------------------------------------------------------------ set-up

    def adopt(self, model: LoadedModel) -> ModelHandle:
        """The first model (loaded at boot); returns the handle the pipeline reads."""
        self.handle = ModelHandle(model)
        return self.handle

    def attach(self, call_between_frames: Callable[[Callable[[], object]], None]) -> None:
        """The pipeline's hook that runs a function on the inference thread between two frames."""
        self._between_frames = call_between_frames

    @property
    def serving(self) -> LoadedModel:
        assert self.handle is not None, "adopt() first"
        return self.handle.current

    # ------------------------------------------------------------------ swaps

    def activate(self, path: Path) -> LoadedModel:
        """Serve the model at ``path`` from the next frame on (by the policy); returns it.

        Raises ``SwapError`` (after restoring a serving model) when it cannot."""
        with self._lock:
            if self.policy == "availability":
                model = self._load_warm(path)
                try:
                    self._step("swap")
                except Exception as err:
                    model.close()
                    raise SwapError(f"swapping to {path} failed: {type(err).__name__}: {err}") from err
                old = self._swap(model)
                if self.standby is not None:  # an older standby: nothing will come back to it
                    self.retire(self.standby)
                self.standby = old
                return model
            return self._in_place(path)

    def revert_now(self) -> LoadedModel | None:
        """Serve the standby again from the next frame on (a rejected candidate): a reference
        swap, safe on any thread. Returns the model it replaced (retired), or None without a
        standby (the caller then ``serve``s the previous version by loading it)."""
        with self._lock:
            standby = self.standby
            if standby is None or not is_loaded(standby):
                return None
            self.standby = None
            rejected = self._swap(standby)
            self.retire(rejected)
            return rejected

    def serve(self, path: Path, wanted: tuple[str, int, str]) -> None:
        """Make the handle serve the version ``wanted`` (name, version, sha256) at ``path``:
        already serving and loaded, the standby, or loaded now. Raises ``SwapError``."""
        with self._lock:
            cur = self.serving
            if identity(cur) == wanted and is_loaded(cur):
                self.release_standby()
                return
            standby = self.standby
            if standby is not None and identity(standby) == wanted and is_loaded(standby):
                self.standby = None
                self.retire(self._swap(standby))
                return
            self.release_standby()
            if self.policy == "availability" and is_loaded(cur):
                self.retire(self._swap(self._load_warm(path)))
                return
            self._in_place(path)

    def release_standby(self) -> None:
        """The standby is not needed any more (committed, or rolled back past it): unload it."""
        with self._lock:
            standby, self.standby = self.standby, None
            if standby is not None and standby is not self.serving:
                self.retire(standby)

    # ------------------------------------------------------------------ steps

    def _step(self, name: str) -> None:
        self.faults(name)

    def _swap(self, model: LoadedModel) -> LoadedModel:
        assert self.handle is not None
        if not isinstance(model, NoModel):
            self.broken = None
        return self.handle.swap(model)

    def _warm(self, model: LoadedModel) -> None:
        frame = self.warm_frame()
        if frame is None:
            frame = np.zeros((480, 640, 3), np.uint8)
        for _ in range(self.warmup_runs):
            model.infer(frame)

    def _load_warm(self, path: Path) -> LoadedModel:
        try:
            self._step("load")
            model = self.loader(path)
        except Exception as err:  # whatever the loader raised, nothing was loaded: report it
            raise SwapError(f"cannot load {path}: {_describe(err)}") from err
        try:
            self._step("warm")
            self._warm(model)
        except Exception as err:  # the model's own failure, whatever it raised: unload it, report
            model.close()
            raise SwapError(f"warm-up of {path} failed: {type(err).__name__}: {err}") from err
        return model

    def _in_place(self, path: Path) -> LoadedModel:
        """Memory policy: unload the serving model, load ``path``; on failure load the old one
        again. Runs on the inference thread between two frames."""
        out: list[LoadedModel] = []

        def swap() -> None:
            t0 = time.perf_counter()
            old = self.serving
            old_path = Path(old.bundle.root) if is_loaded(old) else None
            try:
                if is_loaded(old):
                    try:
                        self._step("unload")
                        old.close()
                    except Exception as err:
                        raise SwapError(
                            f"unloading {old} to load {path} failed: {type(err).__name__}: {err}"
                        ) from err
                model = self._load_warm(path)
            except Exception as err:  # restore a serving model first, then report the failure
                self._restore(old, old_path, err)
                if isinstance(err, SwapError):
                    raise
                raise SwapError(f"swapping to {path} failed: {type(err).__name__}: {err}") from err
            self._swap(model)
            out.append(model)
            self.last_gap_ms = (time.perf_counter() - t0) * 1000.0

        self._call_between_frames(swap)
        return out[0]

    def _restore(self, old: LoadedModel, old_path: Path | None, err: BaseException) -> None:
        """After a failed in-place swap: load what served before, or say that nothing can."""
        if is_loaded(old):  # it failed before the unload: the old model still serves
            return
        if old_path is None:
            before = f" ({old.reason})" if isinstance(old, NoModel) else ""
            self._break(f"{err}; and no model was loaded before it{before}", old)
            return
        try:
            self._step("reload")
            back = self.loader(old_path)
        except Exception as err2:  # nothing can serve: say so loudly
            self._break(f"{err}; reloading {old_path} failed too: {err2}", old)
            return
        self._swap(back)
        log.warning("reloaded %s after a failed swap", back)

    def _break(self, reason: str, old: LoadedModel) -> None:
        self.broken = reason
        self._swap(NoModel(reason, old.name, old.version))
        log.critical("no model can serve: %s", reason)

    def _call_between_frames(self, fn: Callable[[], None], timeout: float = 60.0) -> None:
        """Run ``fn`` on the inference thread between two frames and wait for it."""
        if self._between_frames is None:
            fn()
            return
        done = threading.Event()
        errors: list[BaseException] = []
        gate = threading.Lock()
        started, cancelled = [False], [False]

        def wrapped() -> None:
            with gate:
                if cancelled[0]:
                    return
                started[0] = True
            try:
                fn()
            except BaseException as err:  # handed back to the waiting caller, re-raised there
                errors.append(err)
            finally:
                done.set()

        self._between_frames(wrapped)
        if not done.wait(timeout):
            with gate:
                if not started[0]:  # cancelled: it will not run later behind our back
                    cancelled[0] = True
                    raise SwapError(
                        f"the inference loop did not reach a frame boundary in {timeout:g} s; "
                        "nothing was swapped"
                    )
            done.wait()  # it started: a swap in progress is never abandoned halfway
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ unloading

    def retire(self, model: LoadedModel) -> None:
        """Unload ``model`` once no frame can still be using it (see the module docstring)."""
        if isinstance(model, NoModel):
            return
        if self._between_frames is None:
            model.close()
            return
        with self._retire_lock:
            if not any(m is model for m in self._retiring):
                self._retiring.append(model)

    def on_result(self, model: Any) -> None:
        """A result of ``model`` was written (results thread): unload what retired before it."""
        if not self._retiring:
            return
        with self._retire_lock:
            if any(model is m for m in self._retiring):
                return
            done, self._retiring = self._retiring, []
        threading.Thread(target=_close_all, args=(done,), name="unload", daemon=True).start()

    def close(self) -> None:
        """Unload everything that is not serving (the daemon unloads the serving model last)."""
        with self._retire_lock:
            done, self._retiring = self._retiring, []
        if self.standby is not None:
            done.append(self.standby)
            self.standby = None
        _close_all(done)


def _describe(err: BaseException) -> str:
    """An agent error names the problem itself; anything else also needs its type."""
    return str(err) if isinstance(err, EdgeAgentError) else f"{type(err).__name__}: {err}"


class Versioned(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def sha256(self) -> str: ...


def identity(v: Versioned) -> tuple[str, int, str]:
    """(name, version, sha256): what makes a loaded model, a stored version or a reference the same."""
    return (v.name, v.version, v.sha256)


__all__ = ["NoModel", "SwapError", "Swapper", "identity", "is_loaded"]

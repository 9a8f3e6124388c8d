"""The ``Swapper`` invariant, by a failure injected at every step of every swap path of both
policies (agent/swapper.py):

    after any failure, the next frame is served by a loaded model that was verified when it
    was loaded; if no model can be loaded at all, ``broken`` says why, every frame fails with
    that reason, ``/healthz`` fails and the watchdog stops.

Unit level: real tiny ONNX bundles, real ``LoadedModel``s, a swapper whose between-frames
hook runs the function inline or on a thread standing in for the inference loop. End to
end: an in-process agent whose memory-policy swap fails in warm-up (defect 1) and in the
reload of the old model.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agent.controller import DaemonController
from agent.daemon import Daemon
from agent.manager import ManagerPolicy
from agent.notify import Notifier, Watchdog
from agent.swapper import NoModel, SwapError, Swapper, is_loaded
from inference.errors import BundleError, FatalError
from inference.fsio import sha256_file
from inference.model import LoadedModel, load_model
from ota.update_machine import State
from tests.fixtures.hot_swap import classifier_model, frame_image, make_bundle_from

Start = Callable[..., Any]
Make = Callable[..., Path]
Identity = tuple[str, int, str]

KINDS: dict[str, Callable[[str], BaseException]] = {
    "BundleError": BundleError,
    "MemoryError": MemoryError,
    "RuntimeError": RuntimeError,
}

#: What a ``SwapError`` says for a failure at each step (the step is named, not just the error).
STEP_WORDS = {
    "load": "cannot load",
    "warm": "warm-up",
    "swap": "swapping",
    "unload": "unloading",
    "reload": "reloading",
}

#: The fault points each path reaches, by policy (asserted by ``test_steps_each_path_reaches``).
PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("availability", "activate"): ("load", "warm", "swap"),
    ("availability", "serve-from-standby"): (),
    ("availability", "serve-by-loading"): ("load", "warm"),
    ("availability", "revert_now"): (),
    # the memory policy keeps no standby: a rejected candidate is replaced by loading
    ("memory", "activate"): ("unload", "load", "warm"),
    ("memory", "serve-by-loading"): ("unload", "load", "warm"),
    ("memory", "revert_now"): ("unload", "load", "warm"),
}

#: The version that serves when ``path`` completes (the old one serves after a failure).
DONE = {"activate": 2, "serve-from-standby": 1, "serve-by-loading": 1, "revert_now": 1}
BEFORE = {"activate": 1, "serve-from-standby": 2, "serve-by-loading": 2, "revert_now": 2}


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Bundles:
    v1: Path
    v2: Path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    root = tmp_path_factory.mktemp("swapper-bundles")
    return Bundles(
        v1=make_bundle_from(classifier_model(root / "v1.onnx", 30.0), root / "v1", 1),
        v2=make_bundle_from(classifier_model(root / "v2.onnx", 20.0), root / "v2", 2),
    )


class Faults:
    """The ``faults`` hook: records every step; raises ``kind`` at the armed steps (``times``
    each, or forever with ``None``). Messages never name the step: the swapper must."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.raised: list[str] = []
        self._armed: dict[str, tuple[Callable[[str], BaseException], str, int | None]] = {}
        self._lock = threading.Lock()

    def arm(
        self, step: str, kind: Callable[[str], BaseException], token: str, times: int | None = None
    ) -> None:
        self._armed[step] = (kind, token, times)

    def disarm(self) -> None:
        self._armed.clear()

    def __call__(self, step: str) -> None:
        with self._lock:
            self.hits.append(step)
            armed = self._armed.get(step)
            if armed is None:
                return
            kind, token, times = armed
            if times is not None:
                if times <= 0:
                    return
                self._armed[step] = (kind, token, times - 1)
            self.raised.append(step)
        raise kind(f"injected {token}")


class FrameLoop:
    """Stands in for the pipeline's inference loop: runs queued calls between two frames,
    reads ``handle.current`` once per frame, reports each result to ``on_result``."""

    def __init__(self, swapper: Swapper) -> None:
        self.swapper = swapper
        self.calls: deque[Callable[[], object]] = deque()
        self.cond = threading.Condition()
        self.frames: list[tuple[int, LoadedModel, bool]] = []  # (index, model, finite)
        self.errors: list[tuple[int, LoadedModel, BaseException]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-loop", daemon=True)

    def call_between_frames(self, fn: Callable[[], object]) -> None:
        self.calls.append(fn)

    def start(self) -> FrameLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            while self.calls:
                self.calls.popleft()()
            model = self.swapper.serving
            try:
                result = model.infer(frame_image(i))
            except Exception as err:
                with self.cond:
                    self.errors.append((i, model, err))
                    self.cond.notify_all()
            else:
                self.swapper.on_result(model)
                with self.cond:
                    self.frames.append((i, model, result.finite))
                    self.cond.notify_all()
            i += 1
            self._stop.wait(0.0005)  # pacing, so the loop does not hog the GIL

    @property
    def count(self) -> int:
        return len(self.frames) + len(self.errors)

    def wait_more(self, n: int, *, errors: bool = False, timeout: float = 10.0) -> None:
        """Wait for ``n`` more frames (with ``errors``: ``n`` more failed frames)."""
        with self.cond:
            start = len(self.errors) if errors else self.count
            ok = self.cond.wait_for(
                lambda: (len(self.errors) if errors else self.count) >= start + n, timeout=timeout
            )
        assert ok, f"the frame loop did not run {n} more frames"


@dataclass
class Rig:
    swapper: Swapper
    faults: Faults
    bundles: Bundles
    loop: FrameLoop | None
    models: list[LoadedModel] = field(default_factory=list)  # every model ever loaded
    v1: LoadedModel | None = None

    def identity(self, version: int) -> Identity:
        m = json.loads(((self.bundles.v1 if version == 1 else self.bundles.v2) / "manifest.json").read_text())
        return (str(m["name"]), int(m["version"]), str(m["sha256"]))

    def path(self, version: int) -> Path:
        return self.bundles.v1 if version == 1 else self.bundles.v2

    def serve(self, version: int) -> None:
        self.swapper.serve(self.path(version), self.identity(version))


@pytest.fixture(params=["inline", "thread"])
def make_rig(request: pytest.FixtureRequest, bundles: Bundles) -> Iterator[Callable[[str], Rig]]:
    rigs: list[Rig] = []

    def make(policy: str) -> Rig:
        faults = Faults()
        models: list[LoadedModel] = []

        def loader(path: Path) -> LoadedModel:
            m = load_model(path)
            models.append(m)
            return m

        swapper = Swapper(loader, policy=policy, warmup_runs=1, faults=faults)
        v1 = loader(bundles.v1)
        swapper.adopt(v1)
        loop = None
        if request.param == "thread":
            loop = FrameLoop(swapper)
            swapper.attach(loop.call_between_frames)
            loop.start().wait_more(3)
        rig = Rig(swapper, faults, bundles, loop, models, v1)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if rig.loop is not None:
            rig.loop.stop()
        rig.swapper.close()
        for m in rig.models:
            m.close()


def _join_unloads() -> None:
    """Wait for the short-lived threads that unload retired models."""
    for t in threading.enumerate():
        if t.name == "unload":
            t.join(timeout=10)


def _setup(rig: Rig, path: str) -> None:
    """Bring the swapper to where ``path`` starts (no fault is armed yet)."""
    if path == "activate":
        return
    rig.swapper.activate(rig.path(2))
    if path == "serve-by-loading":
        rig.swapper.release_standby()  # a committed v2: v1 is unloaded
    if rig.loop is not None:
        rig.loop.wait_more(3)


def _run(rig: Rig, path: str) -> None:
    if path == "activate":
        rig.swapper.activate(rig.path(2))
    elif path == "revert_now":
        # as the manager does: the standby at once (``_conclude``), then the persisted part
        # of the rollback serves the previous version (already serving, or by loading)
        rig.swapper.revert_now()
        rig.serve(1)
    else:
        rig.serve(1)


def _assert_serves(rig: Rig, version: int, failed_before: int = 0) -> LoadedModel:
    """A loaded, verified model of ``version`` serves the next frames, and nothing leaks.
    ``failed_before``: how many frames failed, legitimately, before the swap to it."""
    s = rig.swapper
    serving = s.serving
    assert not isinstance(serving, NoModel) and s.broken is None
    assert is_loaded(serving), f"{serving} serves but is closed"
    assert serving.version == version
    bundle = rig.path(version)
    assert serving.sha256 == rig.identity(version)[2] == sha256_file(bundle / "model.onnx")
    result = serving.infer(frame_image(77))
    assert result.finite and result.classes and math.isfinite(result.confidence)
    if rig.loop is not None:
        loop = rig.loop
        mark = loop.count
        loop.wait_more(5)
        with loop.cond:
            after = [m for i, m, _ in loop.frames if i > mark]
            assert after and all(m is serving for m in after)
            assert all(finite for _, _, finite in loop.frames)
            assert len(loop.errors) == failed_before, f"frames failed: {loop.errors[failed_before:][:3]}"
    _join_unloads()
    keep = [m for m in (serving, s.standby) if m is not None]
    assert all(is_loaded(m) for m in keep)
    leaked = [m for m in rig.models if not any(m is k for k in keep) and is_loaded(m)]
    assert not leaked, f"models still loaded that nothing serves: {leaked}"
    return serving


# --------------------------------------------------------------------------- unit level


@pytest.mark.parametrize(("policy", "path"), list(PATHS))
def test_steps_each_path_reaches(make_rig: Callable[[str], Rig], policy: str, path: str) -> None:
    """The fault matrix is complete: a path reaches exactly the steps listed in ``PATHS``."""
    rig = make_rig(policy)
    _setup(rig, path)
    rig.faults.hits.clear()
    _run(rig, path)
    assert tuple(rig.faults.hits) == PATHS[(policy, path)]
    _assert_serves(rig, DONE[path])


FAILURES = [
    pytest.param(policy, path, step, kind, id=f"{policy}-{path}-{step}-{kind}")
    for (policy, path), steps in PATHS.items()
    for step in steps
    for kind in KINDS
]


@pytest.mark.parametrize(("policy", "path", "step", "kind"), FAILURES)
def test_a_failure_at_any_step_leaves_a_loaded_model_serving(
    make_rig: Callable[[str], Rig], policy: str, path: str, step: str, kind: str
) -> None:
    rig = make_rig(policy)
    _setup(rig, path)
    before = rig.swapper.serving
    rig.faults.arm(step, KINDS[kind], "fault", times=1)
    with pytest.raises(SwapError) as raised:
        _run(rig, path)
    assert rig.faults.raised == [step]
    message = str(raised.value)
    assert STEP_WORDS[step] in message and "injected fault" in message, message
    serving = _assert_serves(rig, BEFORE[path])
    if policy == "availability" or step == "unload":
        assert serving is before  # never unloaded: the very same model goes on
    else:
        assert serving is not before and not is_loaded(before)  # unloaded, then loaded again
    # and the next attempt, with nothing failing, completes
    rig.faults.disarm()
    _run(rig, path)
    _assert_serves(rig, DONE[path])


@pytest.mark.parametrize(
    ("policy", "path"), [key for key, steps in PATHS.items() if not steps], ids=lambda v: str(v)
)
@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_swaps_cannot_fail(
    make_rig: Callable[[str], Rig], policy: str, path: str, kind: str
) -> None:
    """Serving the standby (and so rejecting a candidate) is a reference swap: with every
    step failing it still completes, and the standby that was kept warm serves."""
    rig = make_rig(policy)
    _setup(rig, path)
    for step in STEP_WORDS:
        rig.faults.arm(step, KINDS[kind], "fault")
    _run(rig, path)
    assert rig.faults.raised == []
    assert _assert_serves(rig, 1) is rig.v1
    assert rig.swapper.standby is None


@pytest.mark.parametrize("path", ["activate", "serve-by-loading"])
@pytest.mark.parametrize("first", ["load", "warm"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_memory_policy_load_and_reload_fail_says_no_model(
    make_rig: Callable[[str], Rig], path: str, first: str, kind: str
) -> None:
    rig = make_rig("memory")
    _setup(rig, path)
    before = rig.swapper.serving
    rig.faults.arm(first, KINDS[kind], "fault-A")
    rig.faults.arm("reload", KINDS[kind], "fault-B")
    with pytest.raises(SwapError) as raised:
        _run(rig, path)
    assert STEP_WORDS[first] in str(raised.value)
    assert rig.faults.raised == [first, "reload"]
    s = rig.swapper
    reason = s.broken
    assert reason is not None
    for words in (STEP_WORDS[first], "fault-A", "reloading", "fault-B"):
        assert words in reason, reason
    assert not is_loaded(before)
    serving = s.serving
    assert isinstance(serving, NoModel) and serving.reason == reason
    assert (serving.name, serving.version) == (before.name, before.version)
    with pytest.raises(FatalError, match="no model is loaded") as failed:
        serving.infer(frame_image(1))
    assert reason in str(failed.value)
    if rig.loop is not None:  # every frame fails, with the reason: nothing silent
        rig.loop.wait_more(3, errors=True)
        with rig.loop.cond:
            assert all(reason in str(err) for _, _, err in rig.loop.errors)

    # still nothing loads: still broken, and the reason says what failed now
    rig.faults.arm("load", KINDS[kind], "fault-C")
    with pytest.raises(SwapError, match="cannot load"):
        rig.serve(1)
    assert s.broken is not None and "fault-C" in s.broken
    assert isinstance(s.serving, NoModel) and s.serving.reason == s.broken

    # a later successful serve clears ``broken``
    rig.faults.disarm()
    rig.serve(1)  # on the inference thread between two frames: the next frame is served
    assert s.broken is None
    _assert_serves(rig, 1, failed_before=len(rig.loop.errors) if rig.loop is not None else 0)


def test_memory_policy_unload_failure_needs_no_reload(make_rig: Callable[[str], Rig]) -> None:
    """A failure before the unload keeps the old model: the reload is never reached."""
    rig = make_rig("memory")
    before = rig.swapper.serving
    rig.faults.arm("unload", RuntimeError, "fault")
    rig.faults.arm("reload", RuntimeError, "fault")
    with pytest.raises(SwapError, match="unloading"):
        rig.swapper.activate(rig.path(2))
    assert "reload" not in rig.faults.hits and rig.swapper.broken is None
    assert _assert_serves(rig, 1) is before


# --------------------------------------------------------------------------- end to end


def _settle(agent: Any, timeout: float = 30.0) -> None:
    assert agent.manager.wait_idle(timeout), f"manager still busy in {agent.machine.state}"


def _memory_agent(classifier_bundle: Make, in_process_agent: Start, faults: Faults) -> Any:
    policy = ManagerPolicy(swap_policy="memory", isolate_validation=False, probation_frames=20)
    agent = in_process_agent(classifier_bundle(1), policy, faults=faults)
    assert agent.sink.wait_frames(20)
    return agent


class ErrorCounter:
    """Wraps the pipeline's ``on_error`` hook so that a test can wait for failed frames."""

    def __init__(self, agent: Any) -> None:
        self.inner = agent.pipeline.on_error
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []
        agent.pipeline.on_error = self

    def __call__(self, frame: Any, model: Any, err: BaseException) -> None:
        with self.cond:
            self.errors.append(err)
            self.cond.notify_all()
        self.inner(frame, model, err)

    def wait_more(self, n: int, timeout: float = 10.0) -> None:
        with self.cond:
            start = len(self.errors)
            assert self.cond.wait_for(lambda: len(self.errors) >= start + n, timeout=timeout)


@pytest.mark.parametrize("kind", list(KINDS))
def test_memory_policy_warm_up_failure_keeps_v1_serving(
    classifier_bundle: Make, in_process_agent: Start, kind: str
) -> None:
    """Defect 1: the memory-policy swap fails in warm-up. The old model is loaded again
    before the next frame; no frame fails; the job ends FAILED, rolled back, with the reason."""
    faults = Faults()
    faults.arm("warm", KINDS[kind], "fault", times=1)
    agent = _memory_agent(classifier_bundle, in_process_agent, faults)
    v1 = agent.handle.current
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    assert faults.raised == ["warm"]

    serving = agent.handle.current
    assert not isinstance(serving, NoModel) and is_loaded(serving) and serving.version == 1
    assert serving is not v1 and not is_loaded(v1)  # unloaded for the candidate, loaded again
    errors, n = agent.pipeline.errors, len(agent.sink.rows)
    assert agent.sink.wait_frames(n + 30)
    assert agent.pipeline.errors == errors == 0, "frames failed after the failed swap"
    with agent.sink.cond:
        assert {v for _, v, _ in agent.sink.rows[n:]} == {1}
        assert 2 not in {v for _, v, _ in agent.sink.rows}
    assert agent.handle.current is serving and is_loaded(serving)

    status = agent.manager.status()
    assert agent.machine.state is State.IDLE and status["phase"] == "IDLE"
    assert status["outcome"] == "rolled_back", status
    assert "activation failed" in status["reason"] and "warm-up" in status["reason"], status
    assert status["no_model"] is None and agent.manager.healthy() is None
    assert agent.store.current().version == 1
    last = agent.history_rows()[-1]
    assert (last["status"], last["detail"]) == ("FAILED", "rolled_back"), last
    assert DaemonController(agent.pipeline, agent.handle, agent.manager).healthy()


def _broken_agent(classifier_bundle: Make, in_process_agent: Start) -> tuple[Any, Faults]:
    """An agent whose memory-policy swap fails in warm-up and whose reload fails too (and
    the rollback's load of v1 as well): no model can serve."""
    faults = Faults()
    faults.arm("warm", RuntimeError, "warm-fault")
    faults.arm("reload", MemoryError, "reload-fault")
    agent = _memory_agent(classifier_bundle, in_process_agent, faults)
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    assert faults.raised[:2] == ["warm", "reload"]
    return agent, faults


def test_memory_policy_warm_up_and_reload_fail_says_no_model(
    classifier_bundle: Make, in_process_agent: Start
) -> None:
    agent, faults = _broken_agent(classifier_bundle, in_process_agent)
    counter = ErrorCounter(agent)
    reason = agent.manager.healthy()
    assert reason is not None and "warm-up" in reason and "warm-fault" in reason, reason
    status = agent.manager.status()
    assert status["no_model"] == reason
    assert status["phase"] == "IDLE" and status["outcome"] == "unable_to_roll_back", status
    last = agent.history_rows()[-1]
    assert (last["status"], last["detail"]) == ("FAILED", "unable_to_roll_back"), last
    assert "activation failed" in status["reason"] and "rollback failed" in status["reason"], status
    serving = agent.handle.current
    assert isinstance(serving, NoModel) and serving.reason == reason
    counter.wait_more(3)  # every frame fails with the reason, and the agent says so
    assert all(reason in str(err) for err in counter.errors[-3:])

    # once a model can be loaded again, an activation brings the agent back, no restart
    faults.disarm()
    agent.manager.activate(2)
    _settle(agent)
    assert agent.manager.healthy() is None and agent.manager.status()["no_model"] is None
    serving = agent.handle.current
    assert is_loaded(serving) and serving.version == 2
    assert agent.sink.wait_frames(len(agent.sink.rows) + 5)


def test_daemon_health_fails_while_no_model_serves(classifier_bundle: Make, in_process_agent: Start) -> None:
    """``/healthz`` (the controller) and the watchdog heartbeat (the daemon) both fail while
    the swapper is broken, although the inference loop itself is alive."""
    faults = Faults()
    agent = _memory_agent(classifier_bundle, in_process_agent, faults)
    controller = DaemonController(agent.pipeline, agent.handle, agent.manager)
    daemon = cast(Daemon, SimpleNamespace(pipeline=agent.pipeline, manager=agent.manager))
    watchdog = Watchdog(Notifier(None), 10.0, lambda: Daemon._heartbeat(daemon))
    assert controller.healthy() and controller.status()["healthy"] is True
    assert watchdog.check()

    faults.arm("warm", RuntimeError, "warm-fault")
    faults.arm("reload", MemoryError, "reload-fault")
    counter = ErrorCounter(agent)
    agent.manager.submit(classifier_bundle(2))
    _settle(agent)
    counter.wait_more(3)
    assert agent.manager.swapper.broken
    assert controller.clock() - agent.pipeline.heartbeat < controller.stale_after  # the loop is alive
    assert not controller.healthy()
    status = controller.status()
    assert status["healthy"] is False and status["no_model"] == agent.manager.swapper.broken
    assert not watchdog.check() and watchdog.withheld == 1

"""``Collector``: selection on the results thread, JPEG + de-duplication + spool on its worker."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inference.errors import ConfigError, TransientError
from inference.result import ClassScore, Detection, Result
from monitoring.collector import CAPTURE, Collector, PolicyFile
from monitoring.sampler import Strategy
from monitoring.sampling_policy import SamplingPolicy
from monitoring.spool import Spool


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Frame:
    index: int
    ts: float
    image: Any


@dataclass
class Model:
    name: str = "det"
    version: int = 3
    sha256: str = "ab" * 32


def scene(i: int = 0, w: int = 640, h: int = 480) -> np.ndarray:
    """A textured scene; ``i`` moves a block so frames differ by more than a few hash bits."""
    rng = np.random.default_rng(7)
    img = cv2.resize(
        rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST
    )
    x = (i * 97) % (w - 160)
    y = (i * 53) % (h - 160)
    img[y : y + 160, x : x + 160] = (255 - (i * 37) % 256, (i * 71) % 256, (i * 13) % 256)
    return np.ascontiguousarray(img)


def detections(conf: float = 0.45) -> Result:
    return Result(
        "detections",
        conf,
        detections=[
            Detection("face", conf, (64.0, 48.0, 320.0, 240.0)),
            Detection("face", 0.2, (0, 0, 10, 10)),
        ],
    )


def every(name: str = "all", **kw: Any) -> Strategy:
    return Strategy(name=name, kind="random", share=1.0, **kw)


def make(tmp_path: Path, policy: SamplingPolicy, clock: Clock, **kw: Any) -> tuple[Collector, Spool]:
    spool = Spool(tmp_path / "spool", max_bytes=10**9, max_items=10_000, clock=clock)
    collector = Collector(policy, spool, device="cam-1", rng=np.random.default_rng(1), clock=clock, **kw)
    return collector, spool


def test_static_scene_is_kept_once_per_dedup_window(tmp_path: Path) -> None:
    clock = Clock()
    policy = SamplingPolicy(strategies=(every(),), dedup_bits=6, dedup_window_s=60.0)
    collector, spool = make(tmp_path, policy, clock, lossless=True)
    collector.start()
    image = scene()
    for i in range(1000):  # 100 s of a static camera at 10 fps
        clock.t += 0.1
        collector.write(Frame(i, clock.t, image.copy()), detections(), Model())
        collector.drain()
    collector.stop()
    assert collector.kept == 2  # at t=0.1 s and once the first hash is older than 60 s
    assert collector.duplicates == 998
    assert spool.status()["items"] == 1  # the same pixels give the same JPEG: one item
    assert collector.sampler.taken["all"] == 1000


def test_the_sidecar_carries_the_model_scores_stats_and_scaled_prelabels(tmp_path: Path) -> None:
    clock = Clock()
    policy = SamplingPolicy(strategies=(every("unsure"),), max_side=320, jpeg_quality=80)
    collector, spool = make(tmp_path, policy, clock)
    collector.start()
    collector.write(Frame(7, clock.t, scene()), detections(), Model())
    assert collector.drain()
    collector.stop()
    (item,) = spool.pending()
    meta = json.loads(item.meta_path.read_text())
    assert meta["device"] == "cam-1" and meta["strategy"] == "unsure" and meta["frame"] == 7
    assert meta["model"] == {"name": "det", "version": 3, "sha256": "ab" * 32}
    assert meta["image"] == {"width": 320, "height": 240, "source_width": 640, "source_height": 480}
    assert meta["detections"][0] == {"label": "face", "score": 0.45, "box": [32.0, 24.0, 160.0, 120.0]}
    assert meta["scores"]["confidence"] == 0.45 and meta["scores"]["margin"] is None
    assert {"brightness", "contrast", "sharpness"} <= set(meta["stats"])
    assert meta["sha256"] == item.sha256 and meta["ts"] == clock.t
    jpeg = cv2.imdecode(np.frombuffer(item.jpeg_path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (240, 320, 3)


def test_classes_become_prelabels(tmp_path: Path) -> None:
    clock = Clock()
    collector, spool = make(tmp_path, SamplingPolicy(strategies=(every(),)), clock)
    collector.start()
    result = Result("classes", 0.5, classes=[ClassScore("cat", 0.5), ClassScore("dog", 0.3)])
    collector.write(Frame(0, clock.t, scene()), result, Model())
    assert collector.drain()
    collector.stop()
    meta = json.loads(spool.pending()[0].meta_path.read_text())
    assert meta["classes"] == [{"label": "cat", "score": 0.5}, {"label": "dog", "score": 0.3}]
    assert meta["scores"]["margin"] == pytest.approx(0.2)


class BlockingSpool:
    """A spool whose put waits at a barrier: holds the worker so the queue fills (forced, not hoped)."""

    def __init__(self, inner: Spool) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, jpeg: bytes, meta: dict[str, Any]) -> Any:
        self.entered.set()
        assert self.release.wait(10)
        return self.inner.put(jpeg, meta)


def test_a_full_queue_drops_counts_and_gives_the_quota_slot_back(tmp_path: Path) -> None:
    clock = Clock()
    policy = SamplingPolicy(strategies=(every("q", per_minute=100),), queue=2, dedup_bits=0)
    collector, spool = make(tmp_path, policy, clock)
    blocking = BlockingSpool(spool)
    collector.spool = blocking  # type: ignore[assignment]
    collector.start()
    collector.write(Frame(0, clock.t, scene(0)), detections(), Model())
    assert blocking.entered.wait(10)  # the worker holds frame 0 inside put
    for i in range(1, 6):  # 2 fit in the queue, 3 are dropped
        collector.write(Frame(i, clock.t, scene(i)), detections(), Model())
    assert collector.queue_dropped == 3
    assert collector.sampler.taken["q"] == 6
    quota = collector.sampler._quotas["q"]
    assert quota.counts == [3]  # 6 taken, 3 given back
    blocking.release.set()
    assert collector.drain()
    collector.stop()
    assert collector.kept == 3 and spool.status()["items"] == 3


def test_capture_keeps_the_next_n_frames_whatever_the_policy(tmp_path: Path) -> None:
    clock = Clock()
    never = Strategy(name="never", kind="count", min_count=0, per_day=0)
    collector, spool = make(tmp_path, SamplingPolicy(strategies=(never,)), clock, lossless=True)
    collector.start()
    assert "next 3" in collector.capture(3, job_id="j1")
    for i in range(6):
        clock.t += 1
        collector.write(Frame(i, clock.t, scene(i % 2)), detections(), Model())
    assert collector.drain()
    collector.stop()
    assert collector.kept_by == {CAPTURE: 3}  # frames 0, 1, 2; de-duplication does not apply
    assert {json.loads(i.meta_path.read_text())["frame"] for i in spool.pending()} == {0, 1}  # 0 and 2 alike
    with pytest.raises(ConfigError, match="1-1000"):
        collector.capture(0, job_id="j2")


def test_set_policy_is_checked_saved_and_in_force_at_the_next_frame(tmp_path: Path) -> None:
    clock = Clock()
    pfile = PolicyFile(tmp_path)
    collector, _ = make(tmp_path, SamplingPolicy(), clock, policy_file=pfile)
    with pytest.raises(ConfigError, match=r"job j0: sampling.*#1 share"):
        collector.set_policy({"strategies": [{"name": "a", "kind": "random", "share": 3}]}, job_id="j0")
    assert not pfile.path.exists() and collector.status()["policy"] == "config"
    table = {"dedup_bits": 4, "strategies": [{"name": "people", "kind": "classes", "labels": ["person"]}]}
    message = collector.set_policy(table, job_id="j1")
    assert "people" in message
    assert collector.status()["policy"] == "fleet job j1" and collector.policy.dedup_bits == 4
    loaded = pfile.load()
    assert loaded is not None and loaded[1] == "j1" and loaded[0] == collector.policy
    pfile.path.write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        pfile.load()


def test_a_full_disk_is_counted_and_the_worker_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    collector, spool = make(tmp_path, SamplingPolicy(strategies=(every(),), dedup_bits=0), clock)

    class FullSpool:
        calls = 0

        def put(self, jpeg: bytes, meta: dict[str, Any]) -> Any:
            FullSpool.calls += 1
            if FullSpool.calls == 1:
                raise TransientError("disk full while spooling frame x")
            return spool.put(jpeg, meta)

    collector.spool = FullSpool()  # type: ignore[assignment]
    collector.start()
    for i in range(3):
        collector.write(Frame(i, clock.t, scene(i)), detections(), Model())
    assert collector.drain()
    collector.stop()
    assert collector.spool_refused == 1 and collector.kept == 2
    assert "disk full" in (collector.last_error or "")


def test_a_bug_in_the_worker_is_counted_and_it_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    collector, _ = make(tmp_path, SamplingPolicy(strategies=(every(),), dedup_bits=0), clock)
    collector.start()
    collector.write(Frame(0, clock.t, scene(0)), detections(), object())  # no name/version: a bug
    collector.write(Frame(1, clock.t, scene(1)), detections(), Model())
    assert collector.drain()
    collector.stop()
    assert collector.failures == 1 and collector.kept == 1


def test_collected_frames_and_the_drift_strategy(tmp_path: Path) -> None:
    clock = Clock()
    drifting = {"now": False}
    policy = SamplingPolicy(strategies=(Strategy(name="drift", kind="drift"),), dedup_bits=0)
    collector, _ = make(tmp_path, policy, clock, drifted=lambda: drifting["now"], lossless=True)
    collector.start()
    for i in range(6):
        drifting["now"] = i >= 3
        clock.t += 10
        collector.write(Frame(i, clock.t, scene(i)), detections(), Model())
    assert collector.drain()
    collector.stop()
    assert collector.kept_by == {"drift": 3}
    t3 = collector._recent[0][0]
    assert len(collector.collected_frames(t3, t3 + 10)) == 2
    assert collector.collected_frames(0, t3 - 1) == []


def test_quota_counts_survive_a_restart_for_unchanged_strategies(tmp_path: Path) -> None:
    clock = Clock()
    quota = tmp_path / "sampling-quota.json"
    policy = SamplingPolicy(strategies=(every("daily", per_day=3),), dedup_bits=0)
    collector, spool = make(tmp_path, policy, clock, lossless=True, quota_file=quota)
    collector.start()
    for i in range(5):
        clock.t += 1
        collector.write(Frame(i, clock.t, scene(i)), detections(), Model())
    assert collector.drain()
    collector.stop()
    spool.close()
    assert collector.kept == 3 and quota.exists()
    again, spool2 = make(tmp_path, policy, clock, lossless=True, quota_file=quota)
    assert again.sampler.select(detections()) is None  # the day's 3 were kept before the restart
    spool2.close()
    changed = SamplingPolicy(strategies=(every("daily", per_day=4),), dedup_bits=0)
    fresh, spool3 = make(tmp_path, changed, clock, quota_file=quota)
    assert fresh.sampler.select(detections()) == "daily"  # another quota: counted afresh
    spool3.close()
    quota.write_text("{broken")
    make(tmp_path, policy, clock, quota_file=quota)[1].close()  # ignored, with a warning


def test_resending_a_policy_keeps_today_s_counts_and_bad_quota_files_are_ignored(tmp_path: Path) -> None:
    clock = Clock()
    table = {"dedup_bits": 0, "strategies": [{"name": "d", "kind": "random", "share": 1.0, "per_day": 2}]}
    collector, _ = make(tmp_path, SamplingPolicy(), clock)
    collector.set_policy(table, job_id="j1")
    assert collector.sampler.select(detections()) == "d"
    assert collector.sampler.select(detections()) == "d"
    collector.set_policy(table, job_id="j2")  # the same policy again: the day's 2 are spent
    assert collector.sampler.select(detections()) is None
    quota = tmp_path / "q.json"
    quota.write_text(json.dumps({"quotas": {"d": {"limits": 5, "windows": [], "counts": []}}}))
    spool2 = Spool(tmp_path / "spool2", max_bytes=10**6, max_items=10, clock=clock)
    Collector(SamplingPolicy(), spool2, device="d", clock=clock, quota_file=quota)  # ignored, logged
    spool2.close()


def test_a_bad_saved_policy_is_set_aside_and_the_config_s_serves(tmp_path: Path) -> None:
    from agent.collection import Collection
    from agent.config import Config

    (tmp_path / "sampling-policy.json").write_text('{"sampling": {"strategies": "all"}}')
    collection = Collection.build(Config(), tmp_path, device="cam-1", lossless=True)
    try:
        assert collection.collector.status()["policy"] == "config"
        assert (tmp_path / "sampling-policy.json.bad").exists()
        assert not (tmp_path / "sampling-policy.json").exists()
    finally:
        collection.close()

"""Pipeline: lossless and live queues, model errors, swaps between frames, sinks, heartbeat, stop."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from agent.handle import ModelHandle
from agent.pipeline import RESULTS_QUEUE, FrameQueue, Pipeline
from agent.sinks import JsonlSink, ListSink, SinkClosed, SqliteSink, result_record
from agent.source import Backoff, Frame, Source
from monitoring.metrics_store import MetricsStore
from tests.fixtures.agent import FakeModel, FakeSource, numbered, start_agent


def make(
    source: FakeSource, model: FakeModel | None = None, **kwargs: Any
) -> tuple[Pipeline, ModelHandle, ListSink]:
    handle = ModelHandle(cast(Any, model or FakeModel()))
    sink = ListSink()
    kwargs.setdefault("idle_tick", 0.05)
    source.open()  # the pipeline takes an open source
    pipe = Pipeline(cast(Source, source), handle, [sink], **kwargs)
    return pipe, handle, sink


def run_in_thread(pipe: Pipeline) -> threading.Thread:
    t = threading.Thread(target=pipe.run, daemon=True)
    t.start()
    return t


def wait_until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_lossless_source_skips_no_index() -> None:
    source = FakeSource(200)
    pipe, _, sink = make(source)
    stats = pipe.run()
    assert [r["frame"] for r in sink.records] == list(range(200))
    assert [r["confidence"] for r in sink.records[:3]] == [0.0, round(1 / 255, 5), round(2 / 255, 5)]
    assert stats.frames == 200 and stats.dropped == 0 and stats.errors == 0 and stats.captured == 200
    assert sink.flushes >= 1 and source.closes == 1
    # the fake model takes 0.1 ms by its own account; end to end adds the hand-offs
    assert stats.latency_p50_ms >= 0.1


def test_live_source_latest_wins_and_drops_are_counted() -> None:
    source = FakeSource(None, live=True, delay=0.0005)
    pipe, _, sink = make(source, FakeModel(delay=0.01), max_frames=30)
    stats = pipe.run()
    indices = [r["frame"] for r in sink.records]
    assert len(indices) == 30 and indices == sorted(set(indices))
    assert stats.dropped > 0
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(indices))
    assert gaps <= stats.dropped  # every skipped index was a counted drop
    assert stats.frames + stats.dropped <= stats.captured


def test_model_that_raises_is_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    pipe, _, sink = make(FakeSource(20), FakeModel(fail_on=[3, 4, 10]))
    with caplog.at_level(logging.ERROR, logger="agent.pipeline"):
        stats = pipe.run()
    assert [r["frame"] for r in sink.records] == [i for i in range(20) if i not in (3, 4, 10)]
    assert stats.errors == 3 and stats.frames == 17
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "fake failure on call 3" in errors[0].getMessage()  # rate-limited


def test_on_error_hook_sees_each_failed_frame_and_cannot_stop_the_loop() -> None:
    model = FakeModel(fail_on=[1, 2])
    pipe, _, sink = make(FakeSource(5), model)
    seen: list[tuple[int, object, str]] = []

    def hook(frame: Frame, m: object, err: BaseException) -> None:
        seen.append((frame.index, m, str(err)))
        raise ValueError("a broken hook")

    pipe.on_error = hook
    stats = pipe.run()
    assert [(i, m) for i, m, _ in seen] == [(1, model), (2, model)]
    assert "fake failure on call 1" in seen[0][2]
    assert stats.frames == 3 and stats.errors == 2 and len(sink.records) == 3


def test_max_frames() -> None:
    pipe, _, sink = make(FakeSource(None), max_frames=7)
    assert pipe.run().frames == 7
    assert len(sink.records) == 7


def test_model_is_read_once_per_frame_and_swaps_fall_between_frames() -> None:
    v1, v2 = FakeModel("m", 1), FakeModel("m", 2)
    source = FakeSource(40)
    pipe, handle, sink = make(source, v1)

    original = v1.infer

    def infer_and_swap(image: Any) -> Any:
        if v1.calls == 15:  # a swap that lands while frame 15 is being served
            handle.swap(cast(Any, v2))
        return original(image)

    v1.infer = infer_and_swap  # type: ignore[method-assign]
    pipe.run()
    versions = [(r["frame"], r["version"]) for r in sink.records]
    assert [f for f, _ in versions] == list(range(40))  # no index skipped by the swap
    assert all(v == 1 for f, v in versions if f <= 15)  # frame 15 finished on the model it started with
    assert all(v == 2 for f, v in versions if f > 15)
    assert handle.swaps == 1


def test_loaded_model_frames_are_preprocessed_ahead_and_match_infer(tiny_bundle: Path) -> None:
    from inference.model import load_model

    model = load_model(tiny_bundle)
    pipe, _, sink = make(FakeSource(30), cast(Any, model))
    stats = pipe.run()
    assert pipe.prepared == 30 and stats.frames == 30
    for i, record in enumerate(sink.records):
        expected = model.infer(numbered(i))
        assert record["classes"] == expected.payload()["classes"]
        assert record["latency_ms"] > 0
    model.close()


def test_frames_prepared_for_the_old_model_are_redone_after_a_swap(
    tiny_bundle: Path, tiny_models: dict[str, Path]
) -> None:
    from inference.model import load_model

    class Slow:
        """A LoadedModel that takes 2 ms a frame, so that prepared frames queue up."""

        def __init__(self, model: Any) -> None:
            self.model = model

        def __getattr__(self, name: str) -> Any:
            return getattr(self.model, name)

        def run_prepared(self, x: Any) -> Any:
            time.sleep(0.002)
            return self.model.run_prepared(x)

        def infer(self, image: Any) -> Any:
            time.sleep(0.002)
            return self.model.infer(image)

    old_model, new_model = load_model(tiny_bundle), load_model(tiny_models["classifier"])  # v3 BGR, v0 RGB
    assert old_model.spec != new_model.spec
    old, new = Slow(old_model), Slow(new_model)

    class Colours(FakeSource):
        def read(self) -> Any:
            image = super().read()
            if image is not None:
                image[..., 1] //= 2
                image[..., 2] //= 3
            return image

    pipe, handle, sink = make(Colours(60), cast(Any, old))

    class SwapAt(ListSink):
        def write(self, frame: Frame, *args: Any) -> None:
            if frame.index == 10:
                handle.swap(cast(Any, new))  # frames prepared for `old` are in flight now
            super().write(frame, *args)

    pipe.sinks.append(SwapAt())
    pipe.run()
    records = sink.records
    assert [r["frame"] for r in records] == list(range(60))
    versions = [r["version"] for r in records]
    k = versions.index(0)
    assert set(versions[:k]) == {3} and set(versions[k:]) == {0} and k > 10
    for i, record in enumerate(records):
        model = old_model if record["version"] == 3 else new_model
        image = numbered(i)
        image[..., 1] //= 2
        image[..., 2] //= 3
        expected = model.infer(image).payload()
        assert {k: record[k] for k in expected} == expected, i
    assert pipe.prepared < 60  # the frames prepared for the old model were redone on the new one
    old_model.close()
    new_model.close()


def test_call_between_frames_runs_on_the_loop() -> None:
    pipe, _, sink = make(FakeSource(None), max_frames=50)
    seen: list[int] = []
    pipe.call_between_frames(lambda: seen.append(len(sink.records)))
    pipe.run()
    assert seen == [0]


def test_sink_failures_are_counted_and_other_sinks_get_everything() -> None:
    class Broken(ListSink):
        def write(self, *args: Any) -> None:
            raise OSError("disk full")

    source = FakeSource(10)
    source.open()
    handle = ModelHandle(cast(Any, FakeModel()))
    good = ListSink()
    pipe = Pipeline(cast(Source, source), handle, [Broken(), good], idle_tick=0.05)
    stats = pipe.run()
    assert len(good.records) == 10 and stats.sink_errors == 10


def test_sink_closed_ends_the_run() -> None:
    class Closing(ListSink):
        def write(self, frame: Frame, *args: Any) -> None:
            if frame.index == 3:
                raise SinkClosed("reader went away")
            super().write(frame, *args)

    source = FakeSource(None)
    source.open()
    pipe = Pipeline(cast(Source, source), ModelHandle(cast(Any, FakeModel())), [Closing()], idle_tick=0.05)
    stats = pipe.run()  # ends although the source is endless
    assert 4 <= stats.frames <= 4 + RESULTS_QUEUE + 2  # the frames already run are still written


def test_source_dying_mid_run_is_reopened_not_a_crash() -> None:
    source = FakeSource(20, live=False, die_at=[5], fail_opens=2)
    pipe, _, sink = make(source, backoff=Backoff(0.001, 2.0, 0.01))
    stats = pipe.run()
    assert [r["frame"] for r in sink.records] == list(range(20))
    assert stats.reconnects == 1 and source.opens == 4
    assert pipe.capture_error is None


def test_heartbeat_ticks_while_idle_and_freezes_when_the_model_is_stuck() -> None:
    model = FakeModel(block_from=3)
    source = FakeSource(None, live=True, delay=0.02)
    pipe, _, _ = make(source, model, idle_tick=0.02)
    thread = run_in_thread(pipe)
    assert model.blocked.wait(5)
    frozen = pipe.heartbeat
    time.sleep(0.3)
    assert pipe.heartbeat == frozen  # stuck inside infer: no sign of life
    model.gate.set()
    assert wait_until(lambda: pipe.heartbeat > frozen + 0.2)
    pipe.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_idle_heartbeat_without_frames() -> None:
    source = FakeSource(None, live=True, delay=0.5)
    pipe, _, _ = make(source, idle_tick=0.02)
    thread = run_in_thread(pipe)
    start = pipe.heartbeat
    assert wait_until(lambda: pipe.heartbeat > start + 0.1, timeout=2)
    pipe.stop()
    thread.join(5)


def test_request_stop_finishes_the_frame_and_flushes() -> None:
    source = FakeSource(None, live=True, delay=0.001)
    pipe, _, sink = make(source, FakeModel(delay=0.005))
    thread = run_in_thread(pipe)
    assert wait_until(lambda: len(sink.records) >= 5)
    pipe.request_stop()
    thread.join(5)
    assert not thread.is_alive() and sink.flushes >= 1 and source.closes == 1
    stats = pipe.stats()
    assert stats.frames == len(sink.records) and stats.fps > 0


def test_frame_queue_latest_wins_and_blocking_put() -> None:
    q = FrameQueue(1)
    frames = [Frame(i, 0.0, numbered(i)) for i in range(3)]
    assert q.put_latest(frames[0]) == 0
    assert q.put_latest(frames[1]) == 1
    assert q.get(0.01) is frames[1]
    lossless = FrameQueue(1)
    assert lossless.put(frames[0])
    done = threading.Event()

    def producer() -> None:
        lossless.put(frames[1])
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.1)  # full: the producer waits
    assert lossless.get(0.01) is frames[0]
    assert done.wait(2)
    lossless.close()
    assert lossless.get(0.01) is frames[1]
    assert not lossless.put(frames[2])  # closed


def test_jsonl_and_sqlite_sinks(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics.db")
    path = tmp_path / "out" / "results.jsonl"
    jsonl = JsonlSink(str(path))
    sqlite = SqliteSink(store, batch=4)
    handle = ModelHandle(cast(Any, FakeModel("det", 2)))
    source = FakeSource(10)
    source.open()
    pipe = Pipeline(cast(Source, source), handle, [jsonl, sqlite], idle_tick=0.05)
    pipe.run()
    jsonl.close()
    sqlite.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(10))
    assert set(lines[0]) == {"frame", "ts", "model", "version", "latency_ms", "confidence", "detections"}
    assert lines[1]["detections"][0]["label"] == "thing"
    rows = store.results(limit=100)
    assert [r["frame"] for r in rows] == list(range(10))
    assert rows[1]["model"] == "det" and rows[1]["version"] == 2 and rows[1]["n_detections"] == 1
    assert rows[1]["top_label"] == "thing"
    store.close()


def test_result_record_keys() -> None:
    from inference.result import ClassScore, Result

    model = FakeModel("cls", 4)
    frame = Frame(3, 1234.5, numbered(0))
    record = result_record(
        frame, Result("classes", 0.75, classes=[ClassScore("a", 0.75)], latency_ms=2.5), cast(Any, model)
    )
    assert record == {
        "frame": 3,
        "ts": 1234.5,
        "model": "cls",
        "version": 4,
        "latency_ms": 2.5,
        "confidence": 0.75,
        "classes": [{"label": "a", "score": 0.75}],
    }


def test_sigterm_finishes_the_frame_flushes_and_exits_0(tmp_path: Path, tiny_bundle: Path) -> None:
    proc = start_agent(
        ["run", "--model", str(tiny_bundle), "--source", "synthetic:64x48@50,live", "--results", "-",
         "--state-dir", str(tmp_path / "state")],
        tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(5)]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in lines + out.splitlines()]  # every line is complete JSON
    frames = [r["frame"] for r in records]
    assert frames == sorted(frames) and len(records) >= 5
    assert "done:" in err
    store = MetricsStore(tmp_path / "state" / "metrics.db")
    assert [e["kind"] for e in store.events()][-2:] == ["start", "stop"]
    assert store.events("stop")[-1]["detail"]["frames"] == len(records)
    store.close()

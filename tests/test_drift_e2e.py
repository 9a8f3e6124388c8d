"""Drift monitoring end to end with the real parts: BlazeFace on frames of the demo scenes, a
bundle whose reference profile ``edge-agent bundle create --reference`` computed, the agent in
a subprocess, a real mosquitto broker, metrics.db, ``edge-agent report``, ``/metrics`` and
``edge-agent status``.

The frames are every 30th frame of ``demo:faces`` (one a second of a 30 fps camera: what the
agent samples by default), written as JPEG files; the agent samples every one of them
(``sample_every = "1"``) in windows of 30. The changed run shows the normal scenes for 10
windows, then the same scenes darkened to 35 % and blurred (a dirty lens at dusk).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from tests.fixtures.agent import run_agent, start_agent, stop_agent, wait_for
from tests.fixtures.mosquitto import Mosquitto, Subscriber, free_port

pytestmark = [pytest.mark.models, pytest.mark.slow]

STEP = 30  # demo frames between two samples: one a second at 30 fps
WINDOW = 30
K = 3
CALM_WINDOWS = 10
CHANGED_WINDOWS = 10
REFERENCE_SAMPLES = 1200
DEVICE = "cam-drift"
Image = npt.NDArray[np.uint8]


def dusk(image: Image) -> Image:
    """Darkened to 35 % and blurred (sigma 2.5 px at 320x240)."""
    import cv2

    dark = (image.astype(np.float32) * 0.35).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(dark, (0, 0), 2.5), np.uint8)


@dataclass(frozen=True)
class Scenes:
    root: Path
    bundle: Path
    same: Path  # 20 windows of the normal scenes
    changed: Path  # 10 windows of them, then 10 darkened and blurred


def _write(folder: Path, frames: Iterator[Image]) -> Path:
    import cv2

    folder.mkdir(parents=True)
    for i, image in enumerate(frames):
        assert cv2.imwrite(str(folder / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory, zoo_bundle: Callable[[str], Path]) -> Scenes:
    from agent.cli import main as cli
    from agent.demo_source import parse_demo_spec

    zoo = zoo_bundle("blazeface")
    root = tmp_path_factory.mktemp("drift-e2e")
    demo = parse_demo_spec("demo:faces:320x240@0")
    demo.open()
    run = (CALM_WINDOWS + CHANGED_WINDOWS) * WINDOW
    reference = _write(root / "reference", (demo.frame(100_000 + STEP * i) for i in range(REFERENCE_SAMPLES)))
    same = _write(root / "same", (demo.frame(STEP * i) for i in range(run)))
    changed = _write(
        root / "changed",
        (
            demo.frame(STEP * i) if i < CALM_WINDOWS * WINDOW else dusk(demo.frame(STEP * i))
            for i in range(run)
        ),
    )
    manifest = json.loads((zoo / "manifest.json").read_text())
    labels = root / "labels.txt"
    labels.write_text("\n".join(manifest["labels"]) + "\n")
    bundle = root / "blazeface-bundle"
    code = cli(
        [
            "bundle", "create", str(zoo / manifest["file"]),
            "--name", "blazeface", "--version", "1",
            "--decoder", manifest["decoder"], "--decoder-params", json.dumps(manifest["decoder_params"]),
            "--labels", str(labels), "--input-spec", json.dumps(manifest["input"]),
            "--task", manifest["task"], "--reference", str(reference), "--out", str(bundle),
        ]
    )  # fmt: skip
    assert code == 0
    return Scenes(root, bundle, same, changed)


def _config(tmp: Path, clear_after: int = K) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f'[monitoring]\nsample_every = "1"\nwindow = "{WINDOW}"\n'
        f"alert_after = {K}\nclear_after = {clear_after}\n"
    )
    return path


def _db_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_the_bundle_carries_a_reference_profile_that_bundle_check_accepts(
    scenes: Scenes, tmp_path: Path
) -> None:
    manifest = json.loads((scenes.bundle / "manifest.json").read_text())
    ref = manifest["reference"]
    assert ref["origin"] == "bundle" and ref["samples"] == REFERENCE_SAMPLES
    assert {"brightness", "contrast", "sharpness", "confidence", "detections"} <= set(ref["metrics"])
    done = run_agent(["bundle", "check", str(scenes.bundle)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ok  reference profile: 1200 samples" in done.stdout
    # the demo's scenes cycle slowly for 1200 samples: bundle check says what that costs
    assert "!!  reference profile: its 1200 samples hold only about" in done.stdout


def test_a_reference_that_does_not_fit_is_rejected_at_bundle_check(scenes: Scenes, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(scenes.bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["reference"]["class_priors"] = {"cat": 1.0}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    done = run_agent(["bundle", "check", str(bad)], tmp_path)
    assert done.returncode == 1
    assert "cat" in done.stderr and "learns a reference from live data" in done.stderr


def test_darkened_and_blurred_scenes_raise_drift_and_decay_alerts_within_k_windows_and_reach_the_fleet(
    scenes: Scenes, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    state = tmp_path / "state"
    feed = Subscriber(mosquitto, [f"edge/v1/{DEVICE}/telemetry", f"edge/v1/{DEVICE}/alerts"])
    try:
        done = run_agent(
            [
                "run", "--model", str(scenes.bundle), "--source", str(scenes.changed),
                "--state-dir", str(state), "--config", str(_config(tmp_path)),
                "--mqtt", mosquitto.url, "--device-id", DEVICE,
            ],
            tmp_path,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        delivered = list(feed.messages)
    finally:
        feed.close()

    db = state / "metrics.db"
    windows = _db_rows(db, "SELECT * FROM windows ORDER BY id")
    assert len(windows) == CALM_WINDOWS + CHANGED_WINDOWS
    assert {w["reference"] for w in windows} == {"bundle"}
    assert [w["drifted"] for w in windows[:CALM_WINDOWS]] == [0] * CALM_WINDOWS, "drift before the change"
    alerts = _db_rows(db, "SELECT * FROM alerts ORDER BY id")
    raised = {(a["kind"], a["metric"]): json.loads(a["detail"]) for a in alerts if a["state"] == "raised"}
    for a in raised.values():
        assert min(a["windows"]) >= CALM_WINDOWS, f"an alert before the change: {a['message']}"
    for metric in ("brightness", "contrast", "sharpness"):
        alert = raised.get(("drift", metric))
        assert alert is not None, f"no {metric} alert; raised: {sorted(raised)}"
        assert max(alert["windows"]) <= CALM_WINDOWS + K - 1, f"{metric} alert later than K windows"

    # the model's confidence decayed: retrain_suggested, with its evidence
    decay = [a for (kind, _), a in raised.items() if kind == "retrain_suggested"]
    assert decay, f"no retrain_suggested; raised: {sorted(raised)}"
    for a in decay:
        assert a["model"] == "blazeface" and a["version"] == 1 and a["reference"] == "bundle"
        assert a["value"] > a["threshold"] > 0 and a["metric"].split(":")[0] in ("confidence", "rate")
        assert len(a["windows"]) >= K and a["start_ts"] < a["end_ts"]
    assert any(a["metric"] == "confidence" for a in decay)

    # every window's telemetry and every alert reached the broker, or waits in the outbox
    from ota.protocol import parse_alert, parse_telemetry

    telemetry = [parse_telemetry(m.payload) for m in delivered if m.topic.endswith("/telemetry")]
    fleet_alerts = [parse_alert(m.payload) for m in delivered if m.topic.endswith("/alerts")]
    pending = _db_rows(state / "outbox" / "outbox.db", "SELECT kind, payload FROM messages")
    telemetry += [parse_telemetry(bytes(p["payload"])) for p in pending if p["kind"] == "telemetry"]
    fleet_alerts += [parse_alert(bytes(p["payload"])) for p in pending if p["kind"] == "alert"]
    assert sorted(t["window"]["index"] for t in telemetry) == list(range(CALM_WINDOWS + CHANGED_WINDOWS))
    assert all(t["reference"] == "bundle" and t["model"] == "blazeface" for t in telemetry)
    late = next(t for t in telemetry if t["window"]["index"] == CALM_WINDOWS + K - 1)
    assert {"brightness", "contrast", "sharpness"} <= set(late["drifted"])
    assert {(a["kind"], a["metric"]) for a in fleet_alerts if a["state"] == "raised"} == set(raised)
    assert len(delivered) > 0, "nothing reached the broker"


def test_the_same_scenes_unchanged_raise_no_alert(scenes: Scenes, tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = run_agent(
        [
            "run", "--model", str(scenes.bundle), "--source", str(scenes.same),
            "--state-dir", str(state), "--config", str(_config(tmp_path)),
        ],
        tmp_path,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    windows = _db_rows(state / "metrics.db", "SELECT drifted, reference FROM windows")
    assert len(windows) == CALM_WINDOWS + CHANGED_WINDOWS and {w["reference"] for w in windows} == {"bundle"}
    assert _db_rows(state / "metrics.db", "SELECT * FROM alerts") == []


def test_report_metrics_and_status_of_a_running_agent(scenes: Scenes, tmp_path: Path) -> None:
    """The changed scenes on a loop with /metrics and the control API; then the report of its database.
    Alerts clear only after 1000 calm windows here, so once raised they stay for the checks."""
    from prometheus_client.parser import text_string_to_metric_families

    state = tmp_path / "state"
    port = free_port()
    proc = start_agent(
        [
            "run", "--model", str(scenes.bundle), "--source", str(scenes.changed), "--loop",
            "--state-dir", str(state), "--config", str(_config(tmp_path, clear_after=1000)),
            "--metrics", f"127.0.0.1:{port}",
        ],
        tmp_path,
    )  # fmt: skip
    try:
        families: dict[str, Any] = {}

        def scraped() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the agent exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            families.clear()
            families.update({f.name: f for f in text_string_to_metric_families(text)})
            active = families.get("edge_agent_alerts_active")
            metrics = {s.labels["metric"] for s in active.samples if s.value == 1} if active else set()
            return {"brightness", "contrast", "sharpness"} <= metrics

        wait_for(scraped, 180, "the agent's /metrics to show the drift alerts")
        status = run_agent(["status", "--state-dir", str(state)], tmp_path)
        assert status.returncode == 0, status.stderr
    finally:
        stop_agent(proc)
    for name in (
        "edge_agent_frames", "edge_agent_inference_errors", "edge_agent_frames_dropped",
        "edge_agent_source_reconnects", "edge_agent_fps", "edge_agent_inference_latency_seconds",
        "edge_agent_confidence", "edge_agent_drift_score", "edge_agent_drift_threshold",
        "edge_agent_alerts_active", "edge_agent_model_info", "edge_agent_updates",
    ):  # fmt: skip
        assert name in families, f"{name} missing from /metrics: {sorted(families)}"
    assert families["edge_agent_frames"].type == "counter"
    assert families["edge_agent_inference_latency_seconds"].type == "histogram"
    active = {s.labels["metric"] for s in families["edge_agent_alerts_active"].samples if s.value == 1}
    assert {"brightness", "contrast", "sharpness"} <= active
    scores = {(s.labels["metric"], s.labels["score"]) for s in families["edge_agent_drift_score"].samples}
    assert ("brightness", "psi") in scores
    info = families["edge_agent_model_info"].samples[0].labels
    assert info["model"] == "blazeface" and info["version"] == "1"
    drift_line = [line for line in status.stdout.splitlines() if line.startswith("drift")]
    assert drift_line and "reference bundle" in drift_line[0] and "ALERTS" in drift_line[0], status.stdout

    # the report of what it wrote
    out = tmp_path / "report"
    done = run_agent(["report", "--state-dir", str(state), "--out", str(out), "--since", "1h"], tmp_path)
    assert done.returncode == 0, done.stderr
    html = (out / "index.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    from PIL import Image as PILImage

    for png in pngs:
        assert png.name in html, f"index.html does not link {png.name}"
        with PILImage.open(png) as im:
            im.load()
            assert im.width >= 600 and im.height >= 300
        assert png.stat().st_size > 10_000
    assert "brightness" in html and "blazeface" in html


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reference-every", "0"], "--reference-every 0.0: give the seconds between frames"),
        (["--reference-count", "10"], "--reference-count 10: a reference needs at least 60 frames"),
        ([], "no such file or folder; give a folder of images or a video"),
    ],
)
def test_bundle_create_refuses_a_reference_it_cannot_build(
    scenes: Scenes, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    from agent.cli import main as cli

    source = str(scenes.root / "reference") if flags else str(tmp_path / "missing")
    model = next(scenes.bundle.glob("model.*"))
    code = cli(
        ["bundle", "create", str(model), "--name", "m", "--version", "1", "--reference", source,
         "--out", str(tmp_path / "out"), *flags]
    )  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written

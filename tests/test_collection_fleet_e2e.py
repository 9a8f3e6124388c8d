"""Frame collection and the fleet (issue 10): the quota in telemetry and /metrics, and the signed
``sampling`` and ``capture`` commands, on a real agent, a real broker and a real model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from agent.control import socket_path
from ota.protocol import parse_telemetry
from tests.fixtures.agent import run_agent, start_agent, stop_agent, wait_for
from tests.fixtures.fleet import Keys, fleet_cli, state_dir_for
from tests.fixtures.mosquitto import Mosquitto, Subscriber, free_port

DEVICE = "cam-q"


def _get(state: Path, path: str) -> dict[str, Any]:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path(state))), timeout=5) as c:
            resp = c.get(f"http://edge-agent{path}")
    except httpx.TransportError:
        return {}
    return resp.json() if resp.status_code == 200 else {}


def _metrics(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
    return out


def test_over_the_quota_the_oldest_go_counted_in_telemetry_and_metrics_and_the_loop_runs_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(40):  # distinct frames: each is kept (then, looped, they are duplicates)
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(
            str(folder / f"{i:03d}.png"), cv2.resize(small, (320, 240), interpolation=cv2.INTER_NEAREST)
        )
    config = tmp_path / "agent.toml"
    config.write_text(
        '[monitoring]\nsample_every = "1"\nwindow = "30"\n\n'
        "[sampling]\ndedup_bits = 0\n[[sampling.strategies]]\n"
        'name = "all"\nkind = "random"\nshare = 1.0\n\n[spool]\nmax_items = 5\n'
    )
    state = tmp_path / "state"
    port = free_port()
    feed = Subscriber(mosquitto, f"edge/v1/{DEVICE}/telemetry")
    proc = start_agent(
        ["run", "--model", "blazeface", "--source", str(folder), "--loop", "--config", str(config),
         "--state-dir", str(state), "--mqtt", mosquitto.url, "--device-id", DEVICE,
         "--metrics", f"127.0.0.1:{port}"],
        tmp_path,
    )  # fmt: skip
    try:

        def telemetry_dropped() -> int:
            spools = [parse_telemetry(m.payload).get("spool") or {} for m in list(feed.messages)]
            return max((s.get("dropped", 0) for s in spools), default=0)

        wait_for(
            lambda: telemetry_dropped() >= 30, 120, "telemetry counting the frames dropped over the quota"
        )
        wait_for(lambda: _metrics(port).get("edge_agent_spool_dropped_total", 0) >= 30, 30, "/metrics")
        m = _metrics(port)
        assert m["edge_agent_spool_items"] == 5  # the quota holds
        status = _get(state, "/status")
        spool = _get(state, "/spool")
        # the spool commands ask the running agent
        shown = run_agent(["spool", "status", "--state-dir", str(state)], tmp_path)
        assert shown.returncode == 0 and "dropped over the quota" in shown.stdout, shown.stderr
        assert "upload    off" in shown.stdout
        flush = run_agent(["spool", "flush", "--state-dir", str(state)], tmp_path)
        assert flush.returncode == 1 and "no [upload] url" in flush.stderr
        purge = run_agent(["spool", "purge", "--state-dir", str(state)], tmp_path)
        assert purge.returncode == 0 and "5 spooled frame(s) deleted" in purge.stdout, purge.stderr
        assert _get(state, "/spool")["spool"]["items"] == 0
    finally:
        stop_agent(proc)
        feed.close()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, err[-3000:]
    assert spool["spool"]["items"] == 5 and spool["spool"]["dropped"] >= 30
    assert spool["sampling"]["kept"] == 40  # the first pass; the looped frames are duplicates
    assert spool["sampling"]["duplicates"] > 0
    # the loop: a lossless source, nothing dropped or failed, every frame run
    assert status["dropped"] == 0 and status["errors"] == 0 and status["frames"] > 40
    assert "over its quota" in err


def test_signed_sampling_and_capture_commands_reach_the_collector_and_the_policy_survives_a_restart(
    tmp_path: Path, mosquitto: Mosquitto, keys: Keys
) -> None:
    state = state_dir_for(tmp_path, DEVICE, keys)
    config = tmp_path / "agent.toml"
    config.write_text(
        '[sampling]\n[[sampling.strategies]]\nname = "unsure"\nkind = "uncertain"\nlow = 0.3\nhigh = 0.6\n'
    )
    args = ["run", "--model", "blazeface", "--source", "demo:faces", "--config", str(config), "--state-dir",
            str(state), "--mqtt", mosquitto.url, "--device-id", DEVICE]  # fmt: skip
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {"dedup_bits": 3, "strategies": [{"name": "faces", "kind": "classes", "labels": ["face"]}]}
        )
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"strategies": [{"name": "x", "kind": "random", "share": 7}]}))
    proc = start_agent(args, tmp_path)
    try:
        wait_for(lambda: bool(_get(state, "/spool")), 60, "the agent's control API")
        assert _get(state, "/spool")["sampling"]["policy"] == "config"
        common = ["--broker", mosquitto.url, "--device", DEVICE, "--key", str(keys.key), "--wait", "60"]
        refused = fleet_cli(tmp_path, "sampling", *common, "--policy", str(bad))
        assert refused.returncode == 2 and "share" in refused.stderr  # checked before it is signed
        sent = fleet_cli(tmp_path, "sampling", *common, "--policy", str(policy), "--job-id", "policy-1")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "SUCCEEDED" in sent.stdout
        now = _get(state, "/spool")["sampling"]
        assert now["policy"] == "fleet job policy-1" and now["strategies"] == ["faces"]
        saved = json.loads((state / "sampling-policy.json").read_text())
        assert saved["job_id"] == "policy-1" and saved["sampling"]["dedup_bits"] == 3
        captured = fleet_cli(tmp_path, "capture", *common, "--frames", "5", "--job-id", "capture-1")
        assert captured.returncode == 0, captured.stdout + captured.stderr
        wait_for(
            lambda: _get(state, "/spool")["sampling"]["kept_by"].get("capture") == 5, 60, "5 captured frames"
        )
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    proc = start_agent(args, tmp_path)
    try:
        wait_for(lambda: bool(_get(state, "/spool")), 60, "the restarted agent's control API")
        assert _get(state, "/spool")["sampling"]["policy"] == "fleet job policy-1"
    finally:
        stop_agent(proc)
    assert "over [sampling] in the config" in (proc.stderr.read() if proc.stderr else "")

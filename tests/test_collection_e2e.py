"""Frame collection end to end (issue 10): the real agent, a real model, real upload servers.

Each test runs ``edge-agent run`` as a subprocess on BlazeFace and the demo camera, and drives it
through its control API (``GET /spool``) and the servers' own counts; every wait is on a
condition, with a deadline that fails the test.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from agent.control import socket_path
from tests.fixtures.agent import run_agent, start_agent, stop_agent, wait_for
from tests.fixtures.upload import MotoLate
from tests.fixtures.upload_server import UploadServer

QUOTA = 24  # frames kept in a run: the strategy's per_day quota
FAST_RETRY = "retry_min_s = 0.05\nretry_max_s = 0.5\n"
EVERY = '[[sampling.strategies]]\nname = "all"\nkind = "random"\nshare = 1.0\n'
NOTHING = '[sampling]\n[[sampling.strategies]]\nname = "none"\nkind = "classes"\nlabels = ["no-such"]\n'


def _config(tmp: Path, upload: str, *, sampling: str | None = None, spool: str = "") -> Path:
    sampling = sampling or (
        f'[sampling]\ndedup_bits = 0\n\n[[sampling.strategies]]\nname = "every"\nkind = "random"\n'
        f"share = 1.0\nper_day = {QUOTA}\n"
    )
    path = tmp / "agent.toml"
    path.write_text(f"{sampling}\n{spool}\n[upload]\n{upload}")
    return path


def _spool(state: Path) -> dict[str, Any]:
    """``GET /spool`` of the running agent ({} while it does not answer yet)."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path(state))), timeout=5) as c:
            resp = c.get("http://edge-agent/spool")
    except httpx.TransportError:
        return {}
    return resp.json() if resp.status_code == 200 else {}


def _run(tmp: Path, config: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    args = ["run", "--model", "blazeface", "--source", "demo:faces", "--config", str(config)]
    return start_agent([*args, "--state-dir", str(state), *extra], tmp)


def _done(state: Path) -> bool:
    s = _spool(state)
    return bool(s) and s["sampling"]["kept"] == QUOTA and s["spool"]["items"] == 0


def _down_half_done(state: Path) -> bool:
    """Half the frames kept while the server is down, and attempts failed meanwhile."""
    s = _spool(state)
    failed = s.get("upload", {}).get("failures", {}).get("unavailable", 0)
    return bool(s) and failed >= 2 and s["sampling"]["kept"] >= QUOTA // 2


def _kept_shas(server_items: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    """{sha256: jpeg} of what an HTTP server holds (each key's .jpg body)."""
    out = {}
    for key, files in server_items.items():
        (jpeg,) = [body for path, body in files.items() if path.endswith(".jpg")]
        out[key] = jpeg
    return out


def test_http_server_down_then_flaky_every_frame_lands_exactly_once(
    tmp_path: Path, upload_server: UploadServer
) -> None:
    upload_server.stop()  # down for the first half of the run
    url = f"{upload_server.url}/frames/{{device}}/{{sha256}}.jpg"
    config = _config(tmp_path, f'url = "{url}"\n{FAST_RETRY}')
    state = tmp_path / "state"
    proc = _run(tmp_path, config, state)
    try:
        wait_for(
            lambda: _down_half_done(state), 60, "frames spooled while the server is down, and failed attempts"
        )
        assert _spool(state)["spool"]["pending"] >= QUOTA // 2 - 1  # kept, not lost
        upload_server.configure(fail_rate=0.3, seed=3)
        upload_server.start()
        wait_for(lambda: _done(state), 120, "every kept frame uploaded and the spool empty")
        final = _spool(state)
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    stats = upload_server.stats()
    assert stats["statuses"].get("503", 0) > 0  # the flaky half really failed some
    stored = _kept_shas(upload_server.stored())
    assert len(stored) == QUOTA == final["upload"]["uploaded"] == final["sampling"]["kept"]
    for sha, jpeg in stored.items():  # content-keyed: each frame once, under its own hash
        assert hashlib.sha256(jpeg).hexdigest() == sha
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
    sidecars = [
        json.loads(body)
        for files in upload_server.stored().values()
        for path, body in files.items()
        if path.endswith(".json")
    ]
    assert len(sidecars) == QUOTA
    assert all(m["model"]["name"] == "blazeface" and m["strategy"] == "every" for m in sidecars)
    assert final["spool"]["pending"] == 0 and final["spool"]["dropped"] == 0


def test_s3_server_down_then_up_every_frame_lands_exactly_once(tmp_path: Path, moto_late: MotoLate) -> None:
    config = _config(
        tmp_path,
        f'url = "s3://frames/fleet"\nendpoint = "{moto_late.endpoint}"\nregion = "eu-west-1"\n'
        f'credentials_file = "{moto_late.creds_path}"\n{FAST_RETRY}',
    )
    state = tmp_path / "state"
    proc = _run(tmp_path, config, state, "--device-id", "cam-7")
    try:
        wait_for(lambda: _down_half_done(state), 60, "frames spooled while S3 is down")
        moto_late.start()
        wait_for(lambda: _done(state), 120, "every kept frame in S3 and the spool empty")
        final = _spool(state)
    finally:
        stop_agent(proc)
    assert proc.returncode == 0, (proc.stderr.read() if proc.stderr else "")[-3000:]
    keys = moto_late.object_keys("s3://frames/fleet")
    jpgs = [k for k in keys if k.endswith(".jpg")]
    assert len(jpgs) == QUOTA == final["upload"]["uploaded"]
    assert len([k for k in keys if k.endswith(".json")]) == QUOTA
    assert all(k.startswith("fleet/cam-7/") for k in keys)
    reader = moto_late.reader("s3://frames/fleet")
    for key in jpgs[:3]:  # read back through the S3 API, signed
        body = reader.get_object(key)
        assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1].removesuffix(".jpg")


def test_sigkill_during_uploads_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path, upload_server: UploadServer
) -> None:
    upload_server.configure(delay_s=0.4)  # slow: uploads are in flight when the agent dies
    url = f"{upload_server.url}/frames/{{sha256}}.jpg"
    config = _config(tmp_path, f'url = "{url}"\nconcurrency = 2\n{FAST_RETRY}')
    state = tmp_path / "state"
    proc = _run(tmp_path, config, state)
    try:
        wait_for(
            lambda: (
                _spool(state).get("sampling", {}).get("kept") == QUOTA
                and upload_server.stats()["requests"] >= 3
            ),
            60,
            "all frames kept and uploads under way",
        )
        before = _spool(state)
        assert before["spool"]["pending"] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    spooled = {p.stem for p in (state / "spool").glob("*.json")}
    on_server_before = set(_kept_shas(upload_server.stored()))
    assert spooled and len(spooled | on_server_before) == QUOTA  # each frame is in one place or both
    upload_server.configure()
    quiet = _config(
        tmp_path,
        f'url = "{url}"\n{FAST_RETRY}',
        sampling=NOTHING,
    )
    proc = _run(tmp_path, quiet, state)
    try:
        wait_for(
            lambda: _spool(state).get("spool", {}).get("items") == 0, 60, "the spool emptied after restart"
        )
    finally:
        stop_agent(proc)
    stored = _kept_shas(upload_server.stored())
    assert set(stored) == spooled | on_server_before and len(stored) == QUOTA
    assert all(hashlib.sha256(j).hexdigest() == s for s, j in stored.items())


def test_a_static_scene_is_uploaded_once(tmp_path: Path, upload_server: UploadServer) -> None:
    folder = tmp_path / "static"
    folder.mkdir()
    rng = np.random.default_rng(5)
    image = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (640, 480))
    for i in range(60):  # a still camera: sensor noise makes every frame's bytes differ
        noisy = image.astype(np.int16) + rng.integers(-2, 3, image.shape)
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(noisy, 0, 255).astype(np.uint8))
    url = f"{upload_server.url}/f/{{sha256}}.jpg"
    config = _config(tmp_path, f'url = "{url}"\n', sampling='[sampling]\ndedup_window = "10m"\n' + EVERY)
    state = tmp_path / "state"
    done = run_agent(
        [
            "run",
            "--model",
            "blazeface",
            "--source",
            str(folder),
            "--config",
            str(config),
            "--state-dir",
            str(state),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "60 frames" in done.stderr
    on_server = _kept_shas(upload_server.stored())
    left = json.loads(run_agent(["spool", "status", "--state-dir", str(state), "--json"], tmp_path).stdout)[
        "spool"
    ]["items"]
    assert len(on_server) + left == 1  # 60 frames alike but not equal: one kept (uploaded, or waiting)


def test_spool_cli_without_an_agent(tmp_path: Path, upload_server: UploadServer) -> None:
    """``spool status`` reads a spool left by a stopped agent; ``flush --upload`` empties it."""
    state = tmp_path / "state"
    config = tmp_path / "keep.toml"
    config.write_text("[sampling]\ndedup_bits = 0\n" + EVERY)
    args = [
        "--source",
        "demo:faces",
        "--max-frames",
        "12",
        "--config",
        str(config),
        "--state-dir",
        str(state),
    ]
    done = run_agent(["run", "--model", "blazeface", *args], tmp_path)
    assert done.returncode == 0, done.stderr
    status = run_agent(["spool", "status", "--state-dir", str(state), "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    items = json.loads(status.stdout)["spool"]["items"]
    assert items >= 1
    text = run_agent(["spool", "status", "--state-dir", str(state)], tmp_path).stdout
    assert f"{items} waiting" in text and "agent not running" in text
    url = f"{upload_server.url}/f/{{sha256}}.jpg"
    flush = run_agent(["spool", "flush", "--state-dir", str(state), "--upload", url], tmp_path)
    assert flush.returncode == 0, flush.stderr
    assert len(_kept_shas(upload_server.stored())) == items
    purge = run_agent(["spool", "purge", "--state-dir", str(state)], tmp_path)
    assert purge.returncode == 0 and "0 spooled frame(s) deleted" in purge.stdout


@pytest.mark.parametrize("action", ["flush", "purge"])
def test_spool_cli_with_no_spool_says_what_to_do(tmp_path: Path, action: str) -> None:
    done = run_agent(["spool", action, "--state-dir", str(tmp_path / "nothing")], tmp_path)
    assert done.returncode == 1
    assert "no agent answers" in done.stderr

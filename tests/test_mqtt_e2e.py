"""End to end with the real parts: ``edge-agent run --mqtt`` processes on a real mosquitto,
bundles on a real HTTP server process, jobs made and signed by ``edge-agent fleet``, and
what the fleet sees read with the real ``mosquitto_sub``."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import run_agent, stop_agent, wait_for
from tests.fixtures.bundle_server import BundleServer
from tests.fixtures.fleet import (
    PREFIX,
    STEPS,
    Keys,
    StatusFeed,
    fleet_cli,
    make_keys,
    publish_bundle,
    start_device,
    status_feed,
)
from tests.fixtures.mosquitto import Mosquitto, mosquitto_pub

Make = Callable[..., Path]


@pytest.fixture
def feed(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[StatusFeed]:
    yield from status_feed(mosquitto, tmp_path)


def online(feed: StatusFeed, device: str, version: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        s = feed.state(device)
        return bool(
            s
            and s.get("online")
            and s.get("phase") == "IDLE"
            and (version is None or s["version"] == version)
        )

    return check


def signed(
    keys: Keys, job_id: str, *, action: str = "deploy", device: str = "cam-1", **fields: Any
) -> dict[str, Any]:
    """A job made with the Python API (for what the CLI will not make: expired, capture)."""
    from ota.protocol import build_job, new_nonce
    from ota.trust import load_private_key, sign_object

    now = int(time.time())
    fields.setdefault("issued_at", now)
    fields.setdefault("expires_at", now + 3600)
    job = build_job(job_id=job_id, action=action, nonce=new_nonce(), devices=[device], **fields)
    return sign_object(job, load_private_key(keys.key))


def padded_bundle(tmp: Path, version: int, pad_floats: int = 200_000) -> Path:
    """The test classifier with an unused 800 KB initializer: a model file worth resuming."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tests.fixtures.hot_swap import classifier_model, make_bundle_from

    path = classifier_model(tmp / f"padded-{version}.onnx", 25.0)
    model = onnx.load(str(path))
    pad = np.random.default_rng(version).standard_normal(pad_floats).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(pad, "pad"))
    onnx.save(model, str(path))
    return make_bundle_from(path, tmp / f"padded-bundle-{version}", version)


def job_json(tmp: Path, keys: Keys, *args: str) -> dict[str, Any]:
    r = fleet_cli(tmp, "job", "--key", str(keys.key), *args)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


@pytest.mark.slow
def test_fleet_deploy_end_to_end(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bundle_server: BundleServer,
    feed: StatusFeed,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """deploy -> QUEUED -> IN_PROGRESS (downloading ... probation) -> SUCCEEDED, as mosquitto_sub
    sees it; the device serves the new version."""
    v2 = classifier_bundle(2, strength=25.0)
    url, _sha = publish_bundle(v2, bundle_server, "v2", keys.key)
    proc, _state = start_device(tmp_path, mosquitto.url, "cam-1", classifier_bundle(1), keys)
    try:
        feed.wait(online(feed, "cam-1", 1), 90, "cam-1 online serving v1")
        r = fleet_cli(
            tmp_path, "deploy", "--broker", mosquitto.url, "--device", "cam-1", "--manifest-url", url,
            "--key", str(keys.key), "--job-id", "deploy-v2", "--timeout", "120",
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        feed.wait(online(feed, "cam-1", 2), 60, "cam-1 serving v2")
        assert feed.chain("deploy-v2") == STEPS
    finally:
        stop_agent(proc)
    # a clean stop leaves the retained state offline
    feed.wait(lambda: (feed.state("cam-1") or {}).get("online") is False, 30, "cam-1 offline")


@pytest.mark.slow
def test_bad_jobs_are_rejected_and_the_loop_keeps_serving(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bundle_server: BundleServer,
    feed: StatusFeed,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """Each bad input ends REJECTED or FAILED with its reason; v1 keeps serving throughout."""
    other = make_keys(tmp_path / "other-keys", "other")
    proc, state = start_device(tmp_path, mosquitto.url, "cam-1", classifier_bundle(1), keys)
    notify = f"{PREFIX}/cam-1/jobs/notify"
    good_url, good_sha = publish_bundle(classifier_bundle(2, strength=25.0), bundle_server, "v2", keys.key)
    old_url, old_sha = publish_bundle(classifier_bundle(0, strength=25.0), bundle_server, "v0", keys.key)
    incompatible = classifier_bundle(5, strength=25.0, compat={"min_agent_version": "99.0"})
    inc_url, inc_sha = publish_bundle(incompatible, bundle_server, "v5", keys.key)
    big_url, big_sha = publish_bundle(classifier_bundle(6, strength=25.0), bundle_server, "v6", keys.key)
    bundle_server.set_fault("v6/model.onnx", lie="more", lie_size=50_000_000, lie_length=False)
    other_url, other_sha = publish_bundle(classifier_bundle(7, strength=25.0), bundle_server, "v7", keys.key)
    bundle_server.set_fault("v7/model.onnx", lie="other")
    missing = bundle_server.url("nowhere/manifest.json")

    def deploy(job_id: str, url: str = good_url, sha: str = good_sha, *more: str) -> dict[str, Any]:
        return job_json(
            tmp_path, keys, "--device", "cam-1", "--manifest-url", url, "--manifest-sha256", sha,
            "--job-id", job_id, *more,
        )  # fmt: skip

    try:
        feed.wait(online(feed, "cam-1", 1), 90, "cam-1 online")
        cases: list[tuple[str, bytes, str, str]] = []  # (job id, payload, status, reason code)

        def case(job_id: str, job: dict[str, Any] | bytes, status: str, code: str) -> None:
            cases.append((job_id, job if isinstance(job, bytes) else json.dumps(job).encode(), status, code))

        broken = b'{"job_id": "malformed-json", '  # not JSON: reported under an id made from its bytes
        case("malformed-" + hashlib.sha256(broken).hexdigest()[:12], broken, "REJECTED", "malformed")
        typed = deploy("wrong-type")
        typed["issued_at"] = "yesterday"
        case("wrong-type", typed, "REJECTED", "malformed")
        big = deploy("too-big")
        big["pad"] = "x" * 20000
        case("too-big", big, "REJECTED", "too_large")
        unsigned = deploy("unsigned")
        del unsigned["signature"]
        case("unsigned", unsigned, "REJECTED", "unsigned")
        forged = deploy("forged")
        forged["manifest_url"] = missing
        case("forged", forged, "REJECTED", "bad_signature")
        unknown = job_json(
            tmp_path, Keys(other.key, other.pub), "--device", "cam-1", "--manifest-url", good_url,
            "--manifest-sha256", good_sha, "--job-id", "unknown-key",
        )  # fmt: skip
        case("unknown-key", unknown, "REJECTED", "unknown_key")
        case("capture", signed(keys, "capture", action="capture", frames=1), "REJECTED", "unsupported_action")
        now = int(time.time())
        expired = signed(
            keys, "expired", manifest_url=good_url, manifest_sha256=good_sha,
            issued_at=now - 7200, expires_at=now - 3600,
        )  # fmt: skip
        case("expired", expired, "REJECTED", "expired")
        elsewhere = job_json(
            tmp_path, keys, "--device", "cam-2", "--manifest-url", good_url, "--manifest-sha256", good_sha,
            "--job-id", "elsewhere",
        )  # fmt: skip
        case("elsewhere", elsewhere, "REJECTED", "not_for_this_device")
        case("downgrade", deploy("downgrade", old_url, old_sha), "REJECTED", "downgrade")
        case("compat", deploy("compat", inc_url, inc_sha), "REJECTED", "incompatible")
        case("not-found", deploy("not-found", missing, good_sha), "FAILED", "404")
        case("more-bytes", deploy("more-bytes", big_url, big_sha), "FAILED", "bytes")
        case("other-bytes", deploy("other-bytes", other_url, other_sha), "FAILED", "sha256")
        for job_id, payload, status, code in cases:
            mosquitto_pub(mosquitto, notify, payload)
            final = feed.wait_final(job_id, 60)
            assert final["status"] == status, (job_id, final)
            assert code in (final.get("reason") or ""), (job_id, final)
        # a replay: a job id seen before, signed again with a new nonce
        first = deploy("replayed", good_url, good_sha)
        mosquitto_pub(mosquitto, notify, json.dumps(first).encode())
        assert feed.wait_final("replayed", 60)["status"] == "SUCCEEDED"
        n = len(feed.statuses("replayed"))
        mosquitto_pub(mosquitto, notify, json.dumps(deploy("replayed", good_url, good_sha)).encode())
        feed.wait(lambda: len(feed.statuses("replayed")) > n, 30, "the replay to be answered")
        assert feed.statuses("replayed")[-1]["status"] == "REJECTED"
        assert feed.statuses("replayed")[-1]["reason"].startswith("replay")

        # the loop kept serving: frames go on growing, and the version is v2 only from "replayed"
        def status() -> dict[str, Any]:
            r = run_agent(["status", "--json", "--state-dir", str(state)], tmp_path, timeout=60)
            assert r.returncode == 0, r.stderr
            return dict(json.loads(r.stdout))

        first_look = status()
        assert first_look["version"] == 2 and first_look["errors"] == 0
        wait_for(lambda: status()["frames"] > first_look["frames"] + 10, 30, "frames to go on")
        versions = [d.get("version") for t, d in feed.lines if t.endswith("/state") and d.get("online")]
        replayed_at = next(i for i, (t, d) in enumerate(feed.lines) if t.endswith("/jobs/replayed/status"))
        states_before = [d for t, d in feed.lines[:replayed_at] if t.endswith("/state") and d.get("online")]
        assert {d["version"] for d in states_before} == {1}, versions  # v1 served through every bad job
    finally:
        stop_agent(proc)
    assert proc.returncode == 0


@pytest.mark.slow
def test_broker_restart_mid_job_loses_no_status(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bundle_server: BundleServer,
    feed: StatusFeed,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """The broker goes away during a job: the job completes and every status reaches the
    fleet side, in order, none lost (the device's outbox, QoS 1, persistent sessions)."""
    v2 = classifier_bundle(2, strength=25.0)
    url, sha = publish_bundle(v2, bundle_server, "v2", keys.key)
    size = (v2 / "model.onnx").stat().st_size
    bundle_server.set_fault("v2/model.onnx", slow=max(2000, size // 3))  # about 3 s of download
    proc, _state = start_device(tmp_path, mosquitto.url, "cam-1", classifier_bundle(1), keys)
    try:
        feed.wait(online(feed, "cam-1", 1), 90, "cam-1 online")
        job = job_json(
            tmp_path, keys, "--device", "cam-1", "--manifest-url", url, "--manifest-sha256", sha,
            "--job-id", "through-restart",
        )  # fmt: skip
        mosquitto_pub(mosquitto, f"{PREFIX}/cam-1/jobs/notify", json.dumps(job).encode())
        feed.wait(lambda: ("IN_PROGRESS", "downloading") in feed.chain("through-restart"), 30, "downloading")
        mosquitto.stop()
        # the device goes on while the broker is away: the download finishes, validation runs
        time_stop = time.monotonic()
        wait_for(lambda: time.monotonic() - time_stop > 4, 10, "a few seconds without a broker")
        mosquitto.start()
        feed.wait_final("through-restart", 90)
        assert feed.chain("through-restart") == STEPS
        seqs = [d["seq"] for d in feed.statuses("through-restart")]
        assert seqs == sorted(seqs)
    finally:
        stop_agent(proc)


@pytest.mark.slow
def test_download_resumes_after_sigkill(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bundle_server: BundleServer,
    feed: StatusFeed,
    keys: Keys,
    classifier_bundle: Make,
) -> None:
    """A SIGKILL during the download: the restarted agent resumes it with a Range request."""
    v2 = padded_bundle(tmp_path, 2)  # big enough for the download to reach the disk in pieces
    url, sha = publish_bundle(v2, bundle_server, "v2", keys.key)
    size = (v2 / "model.onnx").stat().st_size
    bundle_server.set_fault("v2/model.onnx", slow=size // 8)  # about 8 s
    seed = classifier_bundle(1)
    proc, state = start_device(tmp_path, mosquitto.url, "cam-1", seed, keys)
    try:
        feed.wait(online(feed, "cam-1", 1), 90, "cam-1 online")
        job = job_json(
            tmp_path, keys, "--device", "cam-1", "--manifest-url", url, "--manifest-sha256", sha,
            "--job-id", "killed",
        )  # fmt: skip
        mosquitto_pub(mosquitto, f"{PREFIX}/cam-1/jobs/notify", json.dumps(job).encode())
        part = state / "staging" / "killed" / "model.onnx.part"
        wait_for(lambda: part.exists() and part.stat().st_size > size // 4, 60, "a quarter downloaded")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        bundle_server.clear_fault("v2/model.onnx")
        proc, _ = start_device(tmp_path, mosquitto.url, "cam-1", seed, keys)
        final = feed.wait_final("killed", 90)
        assert final["status"] == "SUCCEEDED", final
        feed.wait(online(feed, "cam-1", 2), 60, "cam-1 serving v2")
        model = bundle_server.stats("v2/model.onnx")
        assert any(r and r.startswith("bytes=") and not r.startswith("bytes=0-") for r in model["ranges"]), (
            model
        )
        assert model["bytes_served"] < size * 1.3, model
    finally:
        stop_agent(proc)

"""``FleetClient`` and ``edge-agent fleet`` against a real mosquitto, with fake devices.

A ``FakeDevice`` is a paho client written here: it publishes a retained state (with its group),
answers each job on its notify topics with the statuses a real agent sends (after checking the
job's form and signature, and refusing a job id it has seen: ``replay``), and records what it
got. The real agent end to end is the lead's test.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import cli_fleet
from ota.errors import ConfigError, Rejected
from ota.fleet import DeployJob, FleetClient, RolloutJournal, make_job, rollback_job_id
from ota.mqtt_link import MqttSettings
from ota.protocol import OFFLINE_STATE, JobMessage, Topics, parse_job, state_payload, status_payload
from ota.rollout import RolloutAction, RolloutPlan
from ota.trust import TrustStore, generate_keypair, load_private_key, load_public_key
from ota.update_events import JobStatus
from tests.fixtures.mosquitto import HOST, Mosquitto, mosquitto_pub
from tests.fixtures.ota import manifest_for

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
URL = "http://bundles.example/det-v2/manifest.json"
WAIT = 10.0
TOPICS = Topics("edge/v1")

Script = list[tuple[str, str | None, str | None]]
DEPLOY_OK: Script = [
    ("QUEUED", None, None),
    ("IN_PROGRESS", "downloading", None),
    ("IN_PROGRESS", "verifying", None),
    ("IN_PROGRESS", "validating", None),
    ("IN_PROGRESS", "activating", None),
    ("IN_PROGRESS", "probation", None),
    ("SUCCEEDED", None, None),
]
DEPLOY_FAIL: Script = [*DEPLOY_OK[:-1], ("FAILED", None, "rolled_back")]
ROLLBACK_OK: Script = [
    ("QUEUED", None, None),
    ("IN_PROGRESS", "rolling_back", None),
    ("SUCCEEDED", None, None),
]


class FakeDevice:
    """A device that answers jobs as the agent does; ``behaviour``: succeed | fail | hold | silent
    (``hold`` reports a deploy QUEUED and waits for ``finish()``; ``silent`` says nothing until then)."""

    def __init__(
        self,
        broker: Mosquitto,
        device: str,
        trust: TrustStore,
        *,
        group: str = "lab",
        behaviour: str = "succeed",
    ) -> None:
        self.device, self.group, self.behaviour, self.trust = device, group, behaviour, trust
        self.version = 1
        self.jobs: list[JobMessage] = []
        self.rejected: list[str] = []
        self.held: list[JobMessage] = []
        self._seen: set[str] = set()
        self._seq = 0
        self._cv = threading.Condition()
        self._subscribed = False
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.will_set(TOPICS.state(device), OFFLINE_STATE, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(HOST, broker.port, keepalive=10)
        self.client.loop_start()
        with self._cv:
            assert self._cv.wait_for(lambda: self._subscribed, WAIT), f"{device} did not subscribe"

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        assert not rc.is_failure
        client.subscribe([(TOPICS.device_notify(self.device), 1), (TOPICS.group_notify(self.group), 1)])
        self.publish_state()

    def _on_subscribe(self, *_args: Any) -> None:
        with self._cv:
            self._subscribed = True
            self._cv.notify_all()

    def publish_state(self) -> None:
        payload = state_payload(
            device=self.device,
            group=self.group,
            model="det",
            version=self.version,
            phase="IDLE",
            fps=10.0,
            uptime_s=5.0,
            agent_version="0.1.0",
            ts=time.time(),
        )
        self.client.publish(TOPICS.state(self.device), payload, qos=1, retain=True)

    def _status(
        self, job_id: str, status: str, step: str | None, detail: str | None, reason: str | None = None
    ) -> None:
        self._seq += 1
        payload = status_payload(
            job_id=job_id,
            status=status,
            step=step,
            detail=detail,
            reason=reason,
            model="det",
            version=self.version,
            ts=time.time(),
            seq=self._seq,
        )
        self.client.publish(TOPICS.status(self.device, job_id), payload, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            job = parse_job(payload)
            self.trust.verify_object(job.to_json())
            if job.job_id in self._seen:
                raise Rejected("replay", f"job {job.job_id} was seen before")
            if not job.target.includes(self.device, self.group):
                raise Rejected("not_for_this_device", "not for me")
        except Rejected as err:
            with self._cv:
                self.rejected.append(err.reason)
                self._cv.notify_all()
            job_id = json.loads(payload).get("job_id", "unknown")
            self._status(job_id, "REJECTED", None, None, f"{err.reason}: {err}")
            return
        self._seen.add(job.job_id)
        with self._cv:
            self.jobs.append(job)
            self._cv.notify_all()
        if job.action == "rollback":
            self._run(job, ROLLBACK_OK)
            self.version -= 1
            self.publish_state()
        elif self.behaviour in ("hold", "silent"):
            if self.behaviour == "hold":
                self._status(job.job_id, "QUEUED", None, None)
            with self._cv:
                self.held.append(job)
                self._cv.notify_all()
        else:
            self._deploy(job)

    def _deploy(self, job: JobMessage) -> None:
        if self.behaviour == "fail":
            self._run(job, DEPLOY_FAIL)
            return
        self.version += 1
        self._run(job, DEPLOY_OK)
        self.publish_state()

    def _run(self, job: JobMessage, script: Script) -> None:
        for status, step, detail in script:
            self._status(job.job_id, status, step, detail)

    def finish(self) -> None:
        """Answer the held deploys (as a device that succeeds)."""
        with self._cv:
            held, self.held = self.held, []
        for job in held:
            self._run(job, DEPLOY_OK[1 if self.behaviour == "hold" else 0 : 2])
            self.version += 1
            self._run(job, DEPLOY_OK[2:])
            self.publish_state()

    def wait_for(self, predicate: Any, timeout: float = WAIT) -> bool:
        with self._cv:
            return bool(self._cv.wait_for(predicate, timeout))

    def actions(self) -> list[tuple[str, str]]:
        with self._cv:
            return [(j.action, j.job_id) for j in self.jobs]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(mosquitto: Mosquitto) -> Mosquitto:
    """The real mosquitto of tests/fixtures/mosquitto.py (skipped, or failed under CI, when missing)."""
    return mosquitto


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey, TrustStore]:
    key_path, pub_path = generate_keypair(tmp_path / "keys", "fleet")
    return key_path, load_private_key(key_path), TrustStore.from_keys([load_public_key(pub_path)])


@pytest.fixture
def devices(broker: Mosquitto, keys: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, FakeDevice]]:
    behaviours: dict[str, str] = getattr(request, "param", {})
    made: dict[str, FakeDevice] = {}
    try:
        for i in range(5):
            name = f"cam-{i}"
            made[name] = FakeDevice(broker, name, keys[2], behaviour=behaviours.get(name, "succeed"))
        yield made
    finally:
        for d in made.values():
            d.close()


def fleet_client(
    broker: Mosquitto, key: Ed25519PrivateKey | None, client_id: str = "fleet-test"
) -> FleetClient:
    settings = MqttSettings(url=broker.url, client_id=client_id, session_expiry_s=3600, backoff_min_s=0.1)
    return FleetClient(settings, key=key)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    cli_fleet.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


# --------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("devices", [{"cam-1": "fail"}], indirect=True)
def test_failure_in_a_wave_aborts_and_rolls_back_the_updated_devices(
    broker: Mosquitto, keys: Any, devices: dict[str, FakeDevice], tmp_path: Path
) -> None:
    updates: list[RolloutAction] = []
    with fleet_client(broker, keys[1]) as fleet:
        fleet.watch()
        fleet.connect(WAIT)
        members = fleet.members("lab")  # learned from the retained states
        assert members == sorted(devices)
        plan = RolloutPlan(
            members, waves=[1, "50%", "100%"], abort_failed_pct=30, min_executed=2, rollback_on_abort=True
        )
        result = fleet.run_rollout(
            plan,
            DeployJob("deploy-v2", URL, SHA, release_counter=2),
            on_update=lambda a, _s: updates.append(a),
            timeout=30,
            journal=tmp_path / "journal.jsonl",
        )
        rb = rollback_job_id("deploy-v2")
        # the rollbacks' own statuses come back too
        assert fleet.wait_for(
            lambda: (
                {d: s.status for d, s in fleet.job_statuses(rb).items()}
                == {"cam-0": JobStatus.SUCCEEDED, "cam-2": JobStatus.SUCCEEDED}
            ),
            WAIT,
        )

    assert result.aborted and not result.complete and not result.timed_out
    assert result.reason is not None and "executed devices failed" in result.reason
    assert result.rolled_back == ("cam-0", "cam-2")
    assert not result.succeeded
    # wave 1 (cam-0) passed before wave 2 (cam-1, cam-2) was sent; wave 3 never was
    assert [a.send for a in updates if a.send] == [("cam-0",), ("cam-1", "cam-2")]
    assert devices["cam-0"].actions() == [("deploy", "deploy-v2"), ("rollback", rb)]
    assert devices["cam-1"].actions() == [("deploy", "deploy-v2")]  # failed and rolled itself back
    assert devices["cam-2"].actions() == [("deploy", "deploy-v2"), ("rollback", rb)]
    assert devices["cam-3"].actions() == devices["cam-4"].actions() == []
    assert all(not d.rejected for d in devices.values())
    # each device got its own copy, signed for it alone
    assert devices["cam-0"].jobs[0].target.devices == ("cam-0",)
    assert devices["cam-0"].jobs[0].release_counter == 2


def test_deploy_cli_rolls_out_to_a_group_in_waves_and_exits_0(
    broker: Mosquitto,
    keys: Any,
    devices: dict[str, FakeDevice],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_cli(
        [
            "fleet", "deploy", "--broker", broker.url, "--group", "lab", "--key", str(keys[0]),
            "--manifest-url", URL, "--manifest-sha256", SHA, "--waves", "1,50%", "--job-id", "deploy-cli",
            "--journal", str(tmp_path / "j.jsonl"), "--timeout", "30s",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "every device SUCCEEDED" in out
    assert "wave 1/3" in out and "wave 3/3" in out
    for d in devices.values():
        assert d.actions() == [("deploy", "deploy-cli")]
        assert d.version == 2


@pytest.mark.parametrize("devices", [{"cam-3": "fail"}], indirect=True)
def test_deploy_cli_exits_1_when_a_device_fails(
    broker: Mosquitto,
    keys: Any,
    devices: dict[str, FakeDevice],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_cli(
        [
            "fleet", "deploy", "--broker", broker.url, "--device", "cam-3", "--device", "cam-4",
            "--key", str(keys[0]), "--manifest-url", URL, "--manifest-sha256", SHA,
            "--journal", str(tmp_path / "j.jsonl"), "--timeout", "30",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "COMPLETE with failures" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("cam-")}
    assert rows["cam-3"] == ["cam-3", "FAILED", "rolled_back"]
    assert rows["cam-4"] == ["cam-4", "SUCCEEDED"]


def test_group_deploy_all_at_once_goes_to_the_group_topic(
    broker: Mosquitto, keys: Any, devices: dict[str, FakeDevice], tmp_path: Path
) -> None:
    with fleet_client(broker, keys[1]) as fleet:
        fleet.watch()
        fleet.connect(WAIT)
        plan = RolloutPlan(fleet.members("lab"))
        result = fleet.run_rollout(plan, DeployJob("deploy-g", URL, SHA), timeout=30, group="lab")
    assert result.succeeded
    for d in devices.values():
        assert d.jobs[0].target.group == "lab" and d.jobs[0].job_id == "deploy-g"
    with pytest.raises(ConfigError, match="not to the group"):
        fleet.run_rollout(RolloutPlan(["cam-0"], waves=[1]), DeployJob("x", URL, SHA), group="lab")


@pytest.mark.parametrize("devices", [{"cam-1": "hold", "cam-2": "silent"}], indirect=True)
def test_restarted_rollout_resumes_without_sending_twice(
    broker: Mosquitto, keys: Any, devices: dict[str, FakeDevice], tmp_path: Path
) -> None:
    """cam-0 SUCCEEDED before the crash (only the journal knows it now); cam-1 finishes while the
    fleet is down (its persistent session keeps the statuses); cam-2 got the job but has said
    nothing yet (only the journal knows it was sent). The restarted rollout sends to none of
    them again (a device refuses a job id it has seen) and goes on with wave 3."""

    class Crash(Exception):
        pass

    def crash_once_wave_2_is_out(action: RolloutAction, _statuses: Any) -> None:
        if action.counts.started == 3:
            raise Crash

    journal = tmp_path / "rollout.jsonl"
    plan = RolloutPlan(sorted(devices), waves=[1, "50%"])
    job = DeployJob("deploy-resume", URL, SHA)
    with fleet_client(broker, keys[1], "fleet-deploy-resume") as fleet, pytest.raises(Crash):
        fleet.watch()
        fleet.connect(WAIT)
        fleet.run_rollout(plan, job, on_update=crash_once_wave_2_is_out, timeout=30, journal=journal)
    cam1, cam2 = devices["cam-1"], devices["cam-2"]
    assert cam1.wait_for(lambda: cam1.held) and cam2.wait_for(lambda: cam2.held)
    cam1.finish()
    assert RolloutJournal(journal).load().sent.keys() == {"cam-0", "cam-1", "cam-2"}

    sent_on_restart: list[str] = []

    def first_look(action: RolloutAction, _statuses: Any) -> None:
        sent_on_restart.extend(action.send)
        if not sent_on_restart and cam2.held:
            cam2.finish()  # only now: the restarted rollout had to know it was sent

    with fleet_client(broker, keys[1], "fleet-deploy-resume") as fleet:
        fleet.watch()
        fleet.connect(WAIT)
        result = fleet.run_rollout(plan, job, on_update=first_look, timeout=30, journal=journal)
    assert result.succeeded, result
    assert sent_on_restart == ["cam-3", "cam-4"]
    for d in devices.values():
        assert d.actions() == [("deploy", "deploy-resume")]  # once each: nothing sent twice
        assert not d.rejected
    # a journal of another job is refused, naming the way out
    with pytest.raises(ConfigError, match="another --job-id"):
        fleet_client(broker, keys[1]).run_rollout(
            plan, DeployJob("deploy-resume", URL, "cd" * 32), journal=journal
        )


# --------------------------------------------------------------------------- the view


def test_statuses_are_deduplicated_and_never_go_backwards(broker: Mosquitto) -> None:
    def status(seq: int, status: str, step: str | None = None) -> bytes:
        return status_payload(job_id="j1", status=status, step=step, ts=100.0 + seq, seq=seq)

    topic = TOPICS.status("cam-9", "j1")
    with fleet_client(broker, None, "fleet-view") as fleet:
        fleet.watch()
        fleet.connect(WAIT)
        mosquitto_pub(broker, topic, status(1, "IN_PROGRESS", "downloading"))
        mosquitto_pub(broker, topic, status(5, "SUCCEEDED"))
        mosquitto_pub(broker, topic, status(5, "SUCCEEDED"))  # a QoS 1 duplicate
        mosquitto_pub(broker, topic, status(3, "IN_PROGRESS", "probation"))  # late
        mosquitto_pub(broker, topic, status(7, "QUEUED"))  # a terminal status stays
        # the job delivered twice: the device refuses the copy, the job it runs is unchanged
        replay = status_payload(job_id="j1", status="REJECTED", reason="replay: seen", ts=108.0, seq=8)
        mosquitto_pub(broker, topic, replay)
        mosquitto_pub(broker, topic, b"{not json")
        assert fleet.wait_for(lambda: fleet.duplicates == 4 and fleet.bad_messages == 1, WAIT)
        view = fleet.view("cam-9")
        assert view is not None
        assert (view.job_id, view.status, view.seq, view.last_seen) == ("j1", JobStatus.SUCCEEDED, 5, 105.0)
        assert fleet.job_statuses("j1")["cam-9"].status is JobStatus.SUCCEEDED


def test_status_cli_table_and_json_from_retained_states(
    broker: Mosquitto, keys: Any, devices: dict[str, FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    other = FakeDevice(broker, "gate-1", keys[2], group="yard")
    other.close()  # a clean disconnect keeps the retained online state: mark it offline by hand
    mosquitto_pub(broker, TOPICS.state("gate-1"), OFFLINE_STATE, retain=True)
    with fleet_client(broker, keys[1], "fleet-deploy-s") as fleet:
        fleet.watch()
        fleet.connect(WAIT)
        fleet.deploy("deploy-s", devices=["cam-0"], manifest_url=URL, manifest_sha256=SHA)

        def cam0_updated() -> bool:
            v = fleet.view("cam-0")
            return v is not None and v.version == 2 and v.status is JobStatus.SUCCEEDED

        assert fleet.wait_for(cam0_updated, WAIT)  # its new retained state is at the broker

    assert run_cli(["fleet", "status", "--broker", broker.url, "--window", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEVICE", "ONLINE", "MODEL", "VERSION", "JOB", "STATUS", "STEP", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"cam-0", "cam-1", "cam-2", "cam-3", "cam-4", "gate-1"}
    assert rows["cam-0"][1:4] == ["yes", "det", "2"]
    assert rows["cam-1"][1:7] == ["yes", "det", "1", "-", "-", "-"]
    assert rows["gate-1"][1] == "no"

    assert (
        run_cli(["fleet", "status", "--broker", broker.url, "--group", "lab", "--json", "--window", "0"]) == 0
    )
    views = json.loads(capsys.readouterr().out)
    assert [v["device"] for v in views] == sorted(devices)
    assert all(v["online"] is True and v["group"] == "lab" for v in views)


def test_status_watch_off_a_terminal_prints_a_line_per_change(
    broker: Mosquitto, devices: dict[str, FakeDevice]
) -> None:
    code = (
        "import argparse, sys\n"
        "from agent import cli_fleet\n"
        "p = argparse.ArgumentParser()\n"
        "cli_fleet.register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    argv = ["fleet", "status", "--broker", broker.url, "--group", "lab", "--watch", "--window", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        first = [lines.get(timeout=WAIT).split() for _ in devices]
        assert [row[0] for row in first] == sorted(devices)
        assert all(row[1:4] == ["yes", "det", "1"] for row in first)
        cam = devices["cam-3"]
        cam.version = 7
        cam.publish_state()
        assert lines.get(timeout=WAIT).split()[:4] == ["cam-3", "yes", "det", "7"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_rollback_cli_reaches_the_group(
    broker: Mosquitto, keys: Any, devices: dict[str, FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fleet", "rollback", "--broker", broker.url, "--group", "lab", "--key", str(keys[0])]
    assert run_cli([*argv, "--job-id", "rb-1"]) == 0
    assert "rollback job rb-1 sent to group lab" in capsys.readouterr().out
    for d in devices.values():
        assert d.wait_for(functools.partial(getattr, d, "jobs"))
        assert d.actions() == [("rollback", "rb-1")] and d.jobs[0].target.group == "lab"


def test_deploy_downloads_the_manifest_to_hash_it() -> None:
    manifest = json.dumps(manifest_for("det", 3, b"weights", release_counter=9)).encode()

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/det/manifest.json":
            return httpx.Response(200, content=manifest)
        return httpx.Response(404)

    with httpx.Client(transport=httpx.MockTransport(serve)) as client:
        assert cli_fleet.fetch_manifest("http://b.example/det/manifest.json", client) == (
            hashlib.sha256(manifest).hexdigest(),
            9,
        )
        with pytest.raises(ConfigError, match="HTTP 404"):
            cli_fleet.fetch_manifest("http://b.example/other.json", client)


# --------------------------------------------------------------------------- fleet job


def test_job_cli_prints_a_job_that_parses_verifies_and_a_device_accepts(
    broker: Mosquitto,
    keys: Any,
    devices: dict[str, FakeDevice],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = json.dumps(manifest_for("det", 7, b"model bytes", release_counter=42), indent=2).encode()
    mpath = tmp_path / "manifest.json"
    mpath.write_bytes(manifest)
    code = run_cli(
        ["fleet", "job", "--device", "cam-2", "--key", str(keys[0]), "--manifest-url", URL,
         "--manifest", str(mpath), "--expires", "2h", "--job-id", "job-cli"]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out.strip().encode()
    assert "edge/v1/cam-2/jobs/notify" in captured.err
    job = parse_job(printed)
    assert keys[2].verify_object(job.to_json()) == job.key_id
    assert (job.job_id, job.action, job.devices) == ("job-cli", "deploy", ("cam-2",))
    assert job.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    assert job.release_counter == 42
    assert job.expires_at - job.issued_at == 7200

    mosquitto_pub(broker, TOPICS.device_notify("cam-2"), printed)
    assert devices["cam-2"].wait_for(lambda: devices["cam-2"].jobs)
    assert devices["cam-2"].actions() == [("deploy", "job-cli")] and not devices["cam-2"].rejected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cam-1", "--manifest-url", URL], "--manifest-sha256 HEX or --manifest FILE"),
        (["--device", "cam-1", "--manifest-sha256", SHA], "needs --manifest-url"),
        (["--device", "cam-1", "--manifest-url", "ftp://x/m.json", "--manifest-sha256", SHA], "manifest_url"),
        (["--device", "group", "--action", "rollback"], "reserved"),
        (["--device", "a/b", "--action", "rollback"], "not a usable id"),
        (["--group", "lab", "--action", "rollback", "--manifest-sha256", SHA], "takes no manifest"),
        (["--group", "lab", "--action", "rollback", "--expires", "soon"], "positive duration"),
    ],
)
def test_job_cli_refuses_what_a_device_would_refuse(argv: list[str], message: str, keys: Any) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cli(["fleet", "job", "--key", str(keys[0]), *argv])


def test_make_job_rollback_and_pin(keys: Any) -> None:
    pin = make_job(keys[1], action="pin", group="lab", version=3, now=1000.0, nonce="n" * 20)
    job = parse_job(json.dumps(pin).encode())
    assert (job.action, job.group, job.version, job.issued_at) == ("pin", "lab", 3, 1000)
    assert keys[2].verify_object(job.to_json())
    with pytest.raises(ConfigError, match="takes no manifest"):
        make_job(keys[1], action="rollback", devices=["a"], manifest_url=URL, now=0)
    with pytest.raises(ConfigError, match="exactly one"):
        make_job(keys[1], action="rollback", devices=["a"], group="g", now=0)


def test_journal_replays_what_happened_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    book = RolloutJournal(tmp_path / "sub" / "j.jsonl")
    assert book.load().header is None  # no file yet: nothing happened
    book.record("start", job_id="j", manifest_url=URL, manifest_sha256=SHA, devices=["a", "b"], ts=1.0)
    book.record("signed", kind="deploy", device="a", job={"job_id": "j", "nonce": "n1"})
    book.record("sent", kind="deploy", device="a", ts=2.0)
    book.record(
        "status", device="a", status="IN_PROGRESS", step="probation", detail=None, reason=None, seq=4, ts=3.0
    )
    book.record("sent", kind="rollback", device="a", ts=5.0)
    with open(book.path, "a") as fh:
        fh.write('{"event":"sent","kind":"dep')  # the crash came mid-write
    state = book.load()
    assert state.header is not None and state.header["job_id"] == "j"
    assert state.signed == {("deploy", "a"): {"job_id": "j", "nonce": "n1"}}
    assert state.sent == {"a": 2.0} and state.rolled_back == {"a": 5.0}
    assert state.statuses["a"].status is JobStatus.IN_PROGRESS and state.statuses["a"].seq == 4
    book.path.write_text(
        '{"event":"start"}\nnot json\n{"event":"sent","kind":"deploy","device":"a","ts":1}\n'
    )
    with pytest.raises(ConfigError, match=r"j.jsonl:2: not a rollout journal line"):
        book.load()


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert cli_fleet.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "per_min"), [("10/min", 10.0), ("1/s", 60.0), ("30/h", 0.5), ("5", 5.0)])
def test_parse_rate(text: str, per_min: float) -> None:
    assert cli_fleet.parse_rate(text) == pytest.approx(per_min)

"""The MQTT protocol (ota/protocol.py, ota/schemas/): topics, jobs, device payloads, schemas.

What these prove:
- topics are the contract's, ids cannot smuggle levels or wildcards, and the fleet's topic
  parsers invert the builders;
- every refusal of ``parse_job`` carries the expected reason code and names the field;
- the JSON Schemas and the parsers agree on a table of good and bad payloads, and the few
  rules a schema cannot state (listed in PARSER_ONLY) are refused by the parser alone;
- every builder's output validates against its schema and parses back to what was built.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomllib
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from inference.errors import ConfigError
from inference.result import Detection
from ota import protocol as P
from ota.errors import REJECT_REASONS, Rejected
from ota.update_events import STEPS, JobEvent, JobStatus
from ota.update_machine import Outcome, State

# ---------------------------------------------------------------------------- schema helpers


def _ecma(pattern: str) -> str:
    """JSON Schema patterns are ECMA-262, where ``$`` is the end of input; Python's ``$``
    also matches before a final newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not re.search(_ecma(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _ecma_pattern})
VALIDATORS = {name: EcmaValidator(P.load_schema(name)) for name in P.SCHEMAS}


def schema_ok(name: str, obj: Any) -> bool:
    return bool(VALIDATORS[name].is_valid(obj))


def assert_valid(name: str, payload: bytes) -> dict[str, Any]:
    obj = json.loads(payload)
    errors = [e.message for e in VALIDATORS[name].iter_errors(obj)]
    assert not errors, (name, obj, errors)
    return dict(obj)


# ---------------------------------------------------------------------------- jobs to work with

PRIVATE = Ed25519PrivateKey.generate()
KEY_ID = hashlib.sha256(PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]
SHA = "0123456789abcdef" * 4


def sign(job: dict[str, Any], key: Ed25519PrivateKey = PRIVATE, key_id: str = KEY_ID) -> dict[str, Any]:
    """The fleet's signing rule: add key_id, sign canonical_json of the rest, add signature."""
    body = {**job, "key_id": key_id}
    signature = base64.b64encode(key.sign(P.canonical_json(body))).decode("ascii")
    return {**body, "signature": signature}


def deploy(**over: Any) -> dict[str, Any]:
    job = P.build_job(
        job_id="job-1",
        action="deploy",
        devices=["cam-1", "cam-2"],
        issued_at=1_700_000_000,
        expires_at=1_700_003_600,
        nonce="n0nce-0123456789",
        manifest_url="https://models.example.com/det/7/manifest.json",
        manifest_sha256=SHA,
        release_counter=7,
    )
    return {**sign(job), **over}


def pin(**over: Any) -> dict[str, Any]:
    job = P.build_job(
        job_id="pin-1", action="pin", group="lobby", issued_at=10, expires_at=20, nonce="a" * 16, version=3
    )
    return {**sign(job), **over}


def rollback(**over: Any) -> dict[str, Any]:
    job = P.build_job(
        job_id="rb.1", action="rollback", devices=["cam-1"], issued_at=0, expires_at=1, nonce="_" * 64
    )
    return {**sign(job), **over}


POLICY: dict[str, Any] = {
    "dedup_bits": 6,
    "dedup_window": "10m",
    "strategies": [
        {"name": "unsure", "kind": "uncertain", "low": 0.3, "high": 0.6, "per_minute": 10},
        {"name": "people", "kind": "classes", "labels": ["person", "vélo"]},
    ],
}


def sampling(**over: Any) -> dict[str, Any]:
    job = P.build_job(
        job_id="sampling-1", action="sampling", devices=["cam-1"], issued_at=10, expires_at=20,
        nonce="s" * 16, sampling=POLICY,
    )  # fmt: skip
    return {**sign(job), **over}


def capture(**over: Any) -> dict[str, Any]:
    job = P.build_job(
        job_id="capture-1",
        action="capture",
        group="lobby",
        issued_at=10,
        expires_at=20,
        nonce="c" * 16,
        frames=5,
    )
    return {**sign(job), **over}


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep (this one is level 1)."""
    value: Any = 1
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return {"strategies": value}


def without(job: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in keys}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------------- identifiers, topics


@pytest.mark.parametrize("value", ["a", "cam-1", "Cam_1.b-2", "0", "x" * 64, "group1"])
def test_check_id_accepts(value: str) -> None:
    assert P.check_id(value, "device id") == value


@pytest.mark.parametrize(
    "value",
    ["", "-a", ".a", "_a", "a/b", "a+b", "a#", "a b", "x" * 65, "é", "a\n", None, 3, "group"],
)
def test_check_id_refuses_naming_what(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^device id "):
        P.check_id(value, "device id")


def test_group_is_refused_only_as_a_device_id() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        P.check_id("group", "device id")
    assert P.check_id("group", "group name", device=False) == "group"


@pytest.mark.parametrize("prefix", ["edge/v1", "a", "acme/fleet-7/edge/v1", "x y"])
def test_check_prefix_accepts(prefix: str) -> None:
    assert P.check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["", "/edge", "edge/", "edge//v1", "edge/+", "edge/#", "$SYS/x", "a\0b", 3]
)
def test_check_prefix_refuses(prefix: object) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        P.check_prefix(prefix)


def test_topics_are_the_contracts() -> None:
    t = P.Topics()
    assert t.prefix == P.DEFAULT_PREFIX == "edge/v1"
    assert t.device_notify("cam-1") == "edge/v1/cam-1/jobs/notify"
    assert t.group_notify("lobby") == "edge/v1/group/lobby/jobs/notify"
    assert t.status("cam-1", "job-1") == "edge/v1/cam-1/jobs/job-1/status"
    assert t.state("cam-1") == "edge/v1/cam-1/state"
    assert t.telemetry("cam-1") == "edge/v1/cam-1/telemetry"
    assert t.alerts("cam-1") == "edge/v1/cam-1/alerts"
    assert t.events("cam-1") == "edge/v1/cam-1/events"
    assert t.all_status() == "edge/v1/+/jobs/+/status"
    assert t.all_state() == "edge/v1/+/state"
    other = P.Topics("acme/edge/v2")
    assert other.status("d", "j") == "acme/edge/v2/d/jobs/j/status"


@pytest.mark.parametrize("prefix", ["edge/v1", "acme/fleet/v9"])
@pytest.mark.parametrize("device", ["cam-1", "D.0", "x" * 64])
@pytest.mark.parametrize("job_id", ["job-1", "group", "jobs", "status"])
def test_topics_round_trip(prefix: str, device: str, job_id: str) -> None:
    t = P.Topics(prefix)
    assert t.parse_status_topic(t.status(device, job_id)) == (device, job_id)
    assert t.parse_state_topic(t.state(device)) == device
    assert t.parse_state_topic(t.status(device, job_id)) is None
    assert t.parse_status_topic(t.state(device)) is None


@pytest.mark.parametrize(
    "topic",
    [
        "edge/v2/cam-1/jobs/j/status",
        "edge/v1/cam-1/jobs/j/status/x",
        "edge/v1/cam-1/jobs/j",
        "edge/v1/cam-1/job/j/status",
        "edge/v1//jobs/j/status",
        "edge/v1/group/jobs/j/status",
        "edge/v1/cam 1/jobs/j/status",
        "edge/v1/+/jobs/+/status",
        "xedge/v1/cam-1/jobs/j/status",
        "edge/v1/cam-1/jobs/j/state",
        "edge/v1/cam-1/telemetry",
        "edge/v1/group/lobby/jobs/notify",
    ],
)
def test_status_topic_parser_refuses(topic: str) -> None:
    t = P.Topics()
    assert t.parse_status_topic(topic) is None
    assert t.parse_state_topic(topic) is None


@pytest.mark.parametrize(
    "topic",
    ["edge/v1/state", "edge/v1/group/state", "edge/v1/+/state", "edge/v1/a/b/state", "edge/v1/cam-1/state/"],
)
def test_state_topic_parser_refuses(topic: str) -> None:
    assert P.Topics().parse_state_topic(topic) is None


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.device_notify("a/b"),
        lambda t: t.device_notify("group"),
        lambda t: t.device_notify("+"),
        lambda t: t.group_notify("#"),
        lambda t: t.status("cam-1", "a/b"),
        lambda t: t.status("group", "j"),
        lambda t: t.state(""),
        lambda t: t.events("a+"),
    ],
)
def test_topics_refuse_ids_that_would_change_the_topic(call: Callable[[P.Topics], str]) -> None:
    with pytest.raises(ConfigError):
        call(P.Topics())


# ---------------------------------------------------------------------------- jobs: parse


@pytest.mark.parametrize("job", [deploy(), pin(), rollback(), deploy(action="deploy", target={"group": "g"})])
def test_good_jobs_parse(job: dict[str, Any]) -> None:
    msg = P.parse_job(raw(job))
    assert msg.job_id == job["job_id"] and msg.action == job["action"]
    assert msg.body == without(job, "signature")
    assert msg.signed_bytes() == P.canonical_json(without(job, "signature"))
    assert msg.to_json() == job
    assert msg.key_id == job["key_id"] and msg.signature == job["signature"]


def test_job_message_fields() -> None:
    msg = P.parse_job(raw(deploy()))
    assert msg.target == P.Target(devices=("cam-1", "cam-2"))
    assert msg.devices == ("cam-1", "cam-2") and msg.group is None
    assert (msg.issued_at, msg.expires_at, msg.release_counter, msg.version) == (
        1_700_000_000,
        1_700_003_600,
        7,
        None,
    )
    assert msg.manifest_url == "https://models.example.com/det/7/manifest.json" and msg.manifest_sha256 == SHA
    p = P.parse_job(raw(pin()))
    assert p.group == "lobby" and p.devices == () and p.version == 3 and p.manifest_url is None


def test_target_reads_like_its_json() -> None:
    devices, group = P.Target(devices=("a", "b")), P.Target(group="g")
    assert devices["devices"] == ["a", "b"] and "group" not in devices and devices.get("group") is None
    assert group["group"] == "g" and dict(group) == {"group": "g"} and len(group) == 1
    assert devices.includes("a", None) and not devices.includes("c", "g")
    assert group.includes("x", "g") and not group.includes("x", None) and not group.includes("g", "h")


def test_the_signature_covers_signed_bytes() -> None:
    """What the fleet signs is what the device gets from ``signed_bytes()``, whatever the
    key order and spacing on the wire."""
    job = deploy()
    wire = json.dumps(dict(reversed(list(job.items()))), indent=3).encode()
    msg = P.parse_job(wire)
    PRIVATE.public_key().verify(base64.b64decode(msg.signature), msg.signed_bytes())
    assert P.SIGNATURE_RE.fullmatch(msg.signature) and P.KEY_ID_RE.fullmatch(msg.key_id)


def test_a_job_file_with_a_trailing_newline_parses() -> None:
    """``mosquitto_pub -f job.json`` sends the file as it is."""
    assert P.parse_job(P.canonical_json(deploy()) + b"\n").job_id == "job-1"


def _field_case(field: str, value: Any, base: Callable[..., dict[str, Any]] = deploy) -> bytes:
    return raw(base(**{field: value}))


#: (id, payload, reason, field the message starts with)
JOB_REJECTIONS: list[tuple[str, bytes, str, str]] = [
    ("oversize", raw({**deploy(), "pad": "x" * P.MAX_JOB_BYTES}), "too_large", "job"),
    ("oversize-garbage", b"\xff" * (P.MAX_JOB_BYTES + 1), "too_large", "job"),
    ("not-utf8", b'{"job_id": "\xff"}', "malformed", "job"),
    ("bom", b"\xef\xbb\xbf" + raw(deploy()), "malformed", "job"),
    ("not-json", b"{job}", "malformed", "job"),
    ("empty", b"", "malformed", "job"),
    ("array", b"[1, 2]", "malformed", "job"),
    ("string", b'"job"', "malformed", "job"),
    ("null", b"null", "malformed", "job"),
    ("two-values", raw(deploy()) + b" {}", "malformed", "job"),
    ("nan", raw(deploy()).replace(b'"issued_at": 1700000000', b'"issued_at": NaN'), "malformed", "job"),
    (
        "infinity",
        raw(deploy()).replace(b'"release_counter": 7', b'"release_counter": Infinity'),
        "malformed",
        "job",
    ),
    (
        "-infinity",
        raw(deploy()).replace(b'"release_counter": 7', b'"release_counter": -Infinity'),
        "malformed",
        "job",
    ),
    (
        "1e999",
        raw(deploy()).replace(b'"release_counter": 7', b'"release_counter": 1e999'),
        "malformed",
        "job",
    ),
    (
        "huge-int",
        raw(deploy()).replace(b'"release_counter": 7', b'"release_counter": ' + b"9" * 5000),
        "malformed",
        "job",
    ),
    ("duplicate-key", raw(deploy())[:-1] + b', "job_id": "job-2"}', "malformed", "job"),
    (
        "duplicate-key-nested",
        raw(deploy(target={"group": "a"})).replace(b'"a"}', b'"a", "group": "b"}'),
        "malformed",
        "job",
    ),
    ("deep", b"[" * 5000 + b"]" * 5000, "malformed", "job"),
    ("no-signature", raw(without(deploy(), "signature")), "unsigned", "signature"),
    ("null-signature", raw(deploy(signature=None)), "unsigned", "signature"),
    ("empty-signature", raw(deploy(signature="")), "unsigned", "signature"),
    ("no-key-id", raw(without(deploy(), "key_id")), "unsigned", "key_id"),
    ("unsigned-before-fields", raw({"job_id": 3}), "unsigned", "signature"),
    ("unknown-field", raw(deploy(priority=1)), "malformed", "priority"),
    ("unknown-field-odd-name", raw(deploy(**{"a b/c": 1})), "malformed", "'a b/c'"),
    ("missing-job-id", raw(without(deploy(), "job_id")), "malformed", "job_id"),
    ("missing-action", raw(without(deploy(), "action")), "malformed", "action"),
    ("missing-target", raw(without(deploy(), "target")), "malformed", "target"),
    ("missing-issued-at", raw(without(deploy(), "issued_at")), "malformed", "issued_at"),
    ("missing-expires-at", raw(without(deploy(), "expires_at")), "malformed", "expires_at"),
    ("missing-nonce", raw(without(deploy(), "nonce")), "malformed", "nonce"),
    ("job-id-int", _field_case("job_id", 5), "malformed", "job_id"),
    ("job-id-slash", _field_case("job_id", "a/b"), "malformed", "job_id"),
    ("job-id-plus", _field_case("job_id", "a+"), "malformed", "job_id"),
    ("job-id-long", _field_case("job_id", "j" * 65), "malformed", "job_id"),
    ("job-id-newline", _field_case("job_id", "job-1\n"), "malformed", "job_id"),
    ("job-id-surrogate", raw(deploy()).replace(b'"job-1"', b'"job-\\ud800"'), "malformed", "job_id"),
    ("action-unknown", _field_case("action", "reboot"), "malformed", "action"),
    ("action-case", _field_case("action", "Deploy"), "malformed", "action"),
    ("action-null", _field_case("action", None), "malformed", "action"),
    ("target-string", _field_case("target", "cam-1"), "malformed", "target"),
    ("target-empty", _field_case("target", {}), "malformed", "target"),
    ("target-both", _field_case("target", {"devices": ["a"], "group": "g"}), "malformed", "target"),
    ("target-extra", _field_case("target", {"devices": ["a"], "x": 1}), "malformed", "target"),
    ("devices-empty", _field_case("target", {"devices": []}), "malformed", "target.devices"),
    ("devices-string", _field_case("target", {"devices": "cam-1"}), "malformed", "target.devices"),
    (
        "devices-too-many",
        _field_case("target", {"devices": [f"d{i}" for i in range(1001)]}),
        "malformed",
        "target.devices",
    ),
    ("devices-bad-id", _field_case("target", {"devices": ["a", "b/c"]}), "malformed", "target.devices[1]"),
    ("devices-int", _field_case("target", {"devices": [1]}), "malformed", "target.devices[0]"),
    ("devices-group", _field_case("target", {"devices": ["group"]}), "malformed", "target.devices[0]"),
    (
        "devices-duplicate",
        _field_case("target", {"devices": ["a", "b", "a"]}),
        "malformed",
        "target.devices[2]",
    ),
    ("group-bad", _field_case("target", {"group": "#"}), "malformed", "target.group"),
    ("group-null", _field_case("target", {"group": None}), "malformed", "target.group"),
    ("issued-at-string", _field_case("issued_at", "1700000000"), "malformed", "issued_at"),
    ("issued-at-bool", _field_case("issued_at", True), "malformed", "issued_at"),
    ("issued-at-float", _field_case("issued_at", 1.5), "malformed", "issued_at"),
    ("issued-at-integral-float", _field_case("issued_at", 1_700_000_000.0), "malformed", "issued_at"),
    ("issued-at-negative", _field_case("issued_at", -1), "malformed", "issued_at"),
    ("issued-at-past-2**53", _field_case("issued_at", 2**53), "malformed", "issued_at"),
    ("expires-at-null", _field_case("expires_at", None), "malformed", "expires_at"),
    ("expires-at-equal", _field_case("expires_at", 1_700_000_000), "malformed", "expires_at"),
    ("expires-at-before", _field_case("expires_at", 5), "malformed", "expires_at"),
    ("nonce-short", _field_case("nonce", "a" * 15), "malformed", "nonce"),
    ("nonce-long", _field_case("nonce", "a" * 65), "malformed", "nonce"),
    ("nonce-chars", _field_case("nonce", "abcdefgh.ijklmnop"), "malformed", "nonce"),
    ("nonce-int", _field_case("nonce", 1234567890123456), "malformed", "nonce"),
    ("deploy-no-url", raw(without(deploy(), "manifest_url")), "malformed", "manifest_url"),
    ("deploy-no-sha", raw(without(deploy(), "manifest_sha256")), "malformed", "manifest_sha256"),
    ("url-ftp", _field_case("manifest_url", "ftp://x/m.json"), "malformed", "manifest_url"),
    ("url-relative", _field_case("manifest_url", "/m.json"), "malformed", "manifest_url"),
    ("url-no-host", _field_case("manifest_url", "https:///m.json"), "malformed", "manifest_url"),
    ("url-space", _field_case("manifest_url", "https://x/a b.json"), "malformed", "manifest_url"),
    ("url-non-ascii", _field_case("manifest_url", "https://x/é.json"), "malformed", "manifest_url"),
    ("url-upper-scheme", _field_case("manifest_url", "HTTPS://x/m.json"), "malformed", "manifest_url"),
    ("url-long", _field_case("manifest_url", "https://x/" + "a" * 2039), "malformed", "manifest_url"),
    ("url-int", _field_case("manifest_url", 1), "malformed", "manifest_url"),
    ("sha-upper", _field_case("manifest_sha256", SHA.upper()), "malformed", "manifest_sha256"),
    ("sha-short", _field_case("manifest_sha256", SHA[:63]), "malformed", "manifest_sha256"),
    ("release-counter-negative", _field_case("release_counter", -1), "malformed", "release_counter"),
    ("release-counter-string", _field_case("release_counter", "7"), "malformed", "release_counter"),
    ("release-counter-null", _field_case("release_counter", None), "malformed", "release_counter"),
    (
        "url-on-rollback",
        _field_case("manifest_url", "https://x/m.json", rollback),
        "malformed",
        "manifest_url",
    ),
    ("sha-on-pin", _field_case("manifest_sha256", SHA, pin), "malformed", "manifest_sha256"),
    ("counter-on-rollback", _field_case("release_counter", 1, rollback), "malformed", "release_counter"),
    ("version-on-deploy", _field_case("version", 1), "malformed", "version"),
    ("version-on-rollback", _field_case("version", 1, rollback), "malformed", "version"),
    ("version-negative", _field_case("version", -1, pin), "malformed", "version"),
    ("version-bool", _field_case("version", False, pin), "malformed", "version"),
    ("key-id-upper", _field_case("key_id", KEY_ID.upper()), "malformed", "key_id"),
    ("key-id-short", _field_case("key_id", KEY_ID[:15]), "malformed", "key_id"),
    ("key-id-int", _field_case("key_id", 1), "malformed", "key_id"),
    (
        "signature-urlsafe",
        _field_case("signature", base64.urlsafe_b64encode(b"\xfb" * 64).decode()),
        "malformed",
        "signature",
    ),
    (
        "signature-unpadded",
        _field_case("signature", base64.b64encode(b"s" * 64).decode().rstrip("=")),
        "malformed",
        "signature",
    ),
    (
        "signature-63-bytes",
        _field_case("signature", base64.b64encode(b"s" * 63).decode()),
        "malformed",
        "signature",
    ),
    (
        "signature-65-bytes",
        _field_case("signature", base64.b64encode(b"s" * 65).decode()),
        "malformed",
        "signature",
    ),
    (
        "signature-non-canonical",
        _field_case("signature", base64.b64encode(b"s" * 64).decode()[:85] + "B=="),
        "malformed",
        "signature",
    ),
    ("signature-list", _field_case("signature", ["x"]), "malformed", "signature"),
]


@pytest.mark.parametrize(
    ("payload", "reason", "field"), [c[1:] for c in JOB_REJECTIONS], ids=[c[0] for c in JOB_REJECTIONS]
)
def test_parse_job_refuses(payload: bytes, reason: str, field: str) -> None:
    with pytest.raises(Rejected) as info:
        P.parse_job(payload)
    assert info.value.reason == reason, str(info.value)
    message = str(info.value)
    assert message.startswith(f"{field}: "), message
    assert "; " in message  # what is wrong; what it must be
    assert len(message) < 400, message  # no payload echoed back in full


def test_sampling_and_capture_jobs_parse() -> None:
    job = P.parse_job(raw(sampling()))
    assert (job.action, job.sampling, job.frames, job.devices) == ("sampling", POLICY, None, ("cam-1",))
    job = P.parse_job(raw(capture()))
    assert (job.action, job.frames, job.sampling, job.group) == ("capture", 5, None, "lobby")
    for frames in (1, P.MAX_CAPTURE_FRAMES):
        assert P.parse_job(raw(sign(without(capture(frames=frames), "signature", "key_id")))).frames == frames
    # the policy's meaning is the device's to judge: an unknown key is well formed here
    assert P.parse_job(raw(sampling(sampling={"no_such_key": [1, {"x": None}]}))).sampling is not None
    assert P.parse_job(raw(sampling(sampling={}))).sampling == {}
    assert P.parse_job(raw(sampling(sampling=nested(P.MAX_SAMPLING_DEPTH)))).sampling is not None


#: (id, job, field the message starts with): all refused ``malformed``
SAMPLING_REJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("sampling-missing", without(sampling(), "sampling"), "sampling"),
    ("sampling-null", sampling(sampling=None), "sampling"),
    ("sampling-list", sampling(sampling=[POLICY]), "sampling"),
    ("sampling-string", sampling(sampling='{"dedup_bits": 6}'), "sampling"),
    ("sampling-too-deep", sampling(sampling=nested(P.MAX_SAMPLING_DEPTH + 1)), "sampling"),
    ("sampling-with-frames", sampling(frames=5), "frames"),
    ("sampling-with-rollback", rollback(sampling=POLICY), "sampling"),
    ("sampling-with-deploy", deploy(sampling=POLICY), "sampling"),
    ("frames-missing", without(capture(), "frames"), "frames"),
    ("frames-zero", capture(frames=0), "frames"),
    ("frames-over", capture(frames=P.MAX_CAPTURE_FRAMES + 1), "frames"),
    ("frames-negative", capture(frames=-1), "frames"),
    ("frames-float", capture(frames=5.0), "frames"),
    ("frames-bool", capture(frames=True), "frames"),
    ("frames-string", capture(frames="5"), "frames"),
    ("frames-with-pin", pin(frames=5), "frames"),
    ("capture-with-sampling", capture(sampling=POLICY), "sampling"),
]


@pytest.mark.parametrize(
    ("obj", "field"), [c[1:] for c in SAMPLING_REJECTIONS], ids=[c[0] for c in SAMPLING_REJECTIONS]
)
def test_sampling_and_capture_refusals_name_the_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(Rejected) as info:
        P.parse_job(raw(obj))
    assert info.value.reason == "malformed"
    assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_a_sampling_job_over_the_size_limit_is_too_large() -> None:
    big = {"strategies": [{"name": f"s{i}", "kind": "classes", "labels": ["x" * 100]} for i in range(150)]}
    with pytest.raises(Rejected) as info:
        P.parse_job(raw(sampling(sampling=big)))
    assert info.value.reason == "too_large"
    with pytest.raises(ConfigError, match=r"^sampling: \d+ bytes as canonical JSON; must be at most 16384"):
        P.build_job(
            job_id="j", action="sampling", devices=["a"], issued_at=1, expires_at=2, nonce="n" * 16,
            sampling={"pad": "x" * P.MAX_SAMPLING_BYTES},
        )  # fmt: skip


def test_the_signature_covers_the_policy_and_the_frames() -> None:
    public = PRIVATE.public_key()
    for job, key, changed in (
        (sampling(), "sampling", {**POLICY, "dedup_bits": 0}),
        (capture(), "frames", 1000),
    ):
        msg = P.parse_job(raw(job))
        public.verify(base64.b64decode(msg.signature), msg.signed_bytes())
        assert key in json.loads(msg.signed_bytes())
        forged = P.parse_job(raw({**job, key: changed}))  # well formed, but not what was signed
        with pytest.raises(InvalidSignature):
            public.verify(base64.b64decode(forged.signature), forged.signed_bytes())


def test_build_job_takes_a_toml_table_as_the_policy() -> None:
    table = tomllib.loads('dedup_window = "10m"\n[[strategies]]\nname = "a"\nkind = "random"\nshare = 0.5\n')
    job = P.build_job(
        job_id="j", action="sampling", group="g", issued_at=1, expires_at=2, nonce="n" * 16, sampling=table
    )
    assert P.parse_job(raw(sign(job))).sampling == {
        "dedup_window": "10m", "strategies": [{"name": "a", "kind": "random", "share": 0.5}],
    }  # fmt: skip


# ---------------------------------------------------------------------------- jobs: schema agreement

#: Rules the job schema cannot state; the parser refuses these jobs, the schema takes them.
PARSER_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("expires-at-not-after-issued-at", deploy(expires_at=1_700_000_000)),
    ("integral-float", deploy(issued_at=1_700_000_000.0)),
    ("integral-float-version", pin(version=3.0)),
    ("integral-float-frames", capture(frames=5.0)),
    ("sampling-too-deep", sampling(sampling=nested(P.MAX_SAMPLING_DEPTH + 1))),
    ("oversize", deploy(target={"devices": [f"{i:064d}" for i in range(300)]})),
]

#: Rows of JOB_REJECTIONS that break only those rules.
PARSER_ONLY_REJECTIONS = ("issued-at-integral-float", "expires-at-equal", "expires-at-before")

#: Good and bad jobs on which the schema and the parser must give the same verdict.
AGREEMENT: list[tuple[str, dict[str, Any] | Any]] = [
    ("deploy", deploy()),
    ("deploy-group", deploy(target={"group": "lobby"})),
    ("deploy-no-counter", without(deploy(), "release_counter")),
    ("pin", pin()),
    ("pin-no-version", without(pin(), "version")),
    ("rollback", rollback()),
    ("sampling", sampling()),
    ("sampling-group", sampling(target={"group": "g"})),
    ("sampling-empty", sampling(sampling={})),
    ("capture", capture()),
    ("capture-max", capture(frames=P.MAX_CAPTURE_FRAMES)),
    ("sampling-bare", rollback(action="sampling")),
    ("capture-bare", rollback(action="capture")),
    *[
        (name, obj)
        for name, obj, _ in SAMPLING_REJECTIONS
        if name not in ("sampling-too-deep", "frames-float")
    ],
    ("max-devices", deploy(target={"devices": [f"d{i}" for i in range(1000)]})),
    ("max-ints", deploy(issued_at=P.MAX_INT - 1, expires_at=P.MAX_INT, release_counter=P.MAX_INT)),
    ("max-url", deploy(manifest_url="http://h/" + "a" * 2039)),
    ("url-query", deploy(manifest_url="https://user@h:8443/a/m.json?x=1&y=%20#frag")),
    ("array", [deploy()]),
    ("unsigned", without(deploy(), "signature")),
    ("null-key-id", deploy(key_id=None)),
]


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _plain_json(payload: bytes) -> Any:
    """``payload`` as a Python value when the stdlib reads it without tricks, else None."""
    try:
        text = payload.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None


# Every refusal above whose payload is plain JSON joins the table (duplicate keys and
# oversize payloads are beyond what a schema sees).
AGREEMENT += [
    (name, _plain_json(payload))
    for name, payload, reason, _ in JOB_REJECTIONS
    if reason != "too_large"
    and _plain_json(payload) is not None
    and not name.startswith("duplicate-key")
    and name not in PARSER_ONLY_REJECTIONS
]
PARSER_ONLY += [
    (name, _plain_json(payload)) for name, payload, _, _ in JOB_REJECTIONS if name in PARSER_ONLY_REJECTIONS
]


def parser_ok(payload: bytes, parse: Callable[[bytes], object] = P.parse_job) -> bool:
    try:
        parse(payload)
    except Rejected:
        return False
    return True


@pytest.mark.parametrize("obj", [c[1] for c in AGREEMENT], ids=[c[0] for c in AGREEMENT])
def test_job_schema_and_parser_agree(obj: Any) -> None:
    assert schema_ok("job", obj) == parser_ok(raw(obj)), obj


@pytest.mark.parametrize("obj", [c[1] for c in PARSER_ONLY], ids=[c[0] for c in PARSER_ONLY])
def test_rules_only_the_parser_enforces(obj: dict[str, Any]) -> None:
    assert schema_ok("job", obj)
    assert not parser_ok(raw(obj))


def test_agreement_table_has_both_verdicts() -> None:
    verdicts = [parser_ok(raw(obj)) for _, obj in AGREEMENT]
    assert verdicts.count(True) >= 10 and verdicts.count(False) >= 60


# ---------------------------------------------------------------------------- jobs: build


def test_build_job_makes_what_parse_job_reads() -> None:
    job = P.build_job(
        job_id="j", action="deploy", group="g", issued_at=1, expires_at=2, nonce=P.new_nonce(),
        manifest_url="http://h/m", manifest_sha256=SHA,
    )  # fmt: skip
    assert job == {
        "job_id": "j", "action": "deploy", "target": {"group": "g"}, "issued_at": 1, "expires_at": 2,
        "nonce": job["nonce"], "manifest_url": "http://h/m", "manifest_sha256": SHA,
    }  # fmt: skip
    assert "key_id" not in job and "signature" not in job
    assert P.NONCE_RE.fullmatch(job["nonce"])
    assert schema_ok("job", sign(job))
    assert P.parse_job(raw(sign(job))).body == {**job, "key_id": KEY_ID}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"devices": ["a"], "group": "g"}, "target"),
        ({}, "target"),
        ({"devices": []}, "target.devices"),
        ({"devices": ["group"]}, "target.devices[0]"),
        ({"devices": ["a"], "job_id": "a/b"}, "job_id"),
        ({"devices": ["a"], "action": "reboot"}, "action"),
        ({"devices": ["a"], "manifest_url": None}, "manifest_url"),
        ({"devices": ["a"], "version": 1}, "version"),
        ({"devices": ["a"], "expires_at": 1}, "expires_at"),
        ({"devices": ["a"], "nonce": "short"}, "nonce"),
        ({"devices": ["a"], "issued_at": True}, "issued_at"),
        ({"devices": [f"{i:064d}" for i in range(300)]}, "job"),
    ],
)
def test_build_job_refuses_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {
        "job_id": "j",
        "action": "deploy",
        "issued_at": 1,
        "expires_at": 2,
        "nonce": "n" * 16,
        "manifest_url": "http://h/m",
        "manifest_sha256": SHA,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError, match=f"^{re.escape(field)}"):
        P.build_job(**args)


def test_the_size_check_of_build_job_counts_the_signature() -> None:
    """The largest job build_job makes still parses once signed."""
    devices = [f"device-{i:040d}" for i in range(1000)]
    n = len(devices)
    while True:
        try:
            job = P.build_job(
                job_id="j", action="rollback", devices=devices[:n], issued_at=1, expires_at=2, nonce="n" * 64
            )
            break
        except ConfigError:
            n -= 1
    signed = P.canonical_json(sign(job))
    entry = len(b',""') + len(devices[0])
    assert P.MAX_JOB_BYTES - entry < len(signed) <= P.MAX_JOB_BYTES  # one device more would not fit
    assert P.parse_job(signed).devices == tuple(devices[:n])


# ---------------------------------------------------------------------------- device payloads


def test_status_payloads_validate_and_parse_back() -> None:
    cases: list[dict[str, Any]] = [
        {"status": "QUEUED", "reason": "held: outside the update window"},
        *[{"status": JobStatus.IN_PROGRESS, "step": step} for step in P.STEP_NAMES],
        {"status": "SUCCEEDED", "model": "det", "version": 7},
        *[{"status": "FAILED", "detail": o.value, "reason": "validation failed"} for o in Outcome],
        {"status": "FAILED"},
        *[{"status": "REJECTED", "reason": f"{code}: why"} for code in REJECT_REASONS],
    ]
    for seq, case in enumerate(cases):
        payload = P.status_payload(job_id="job-1", ts=1_700_000_000.123456, seq=seq, **case)
        obj = assert_valid("status", payload)
        assert payload == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        msg = P.parse_status(payload)
        assert msg.status is JobStatus(case["status"]) and msg.seq == seq and msg.ts == 1_700_000_000.123
        assert (msg.step, msg.detail, msg.reason) == (
            case.get("step"),
            case.get("detail"),
            case.get("reason"),
        )
        assert msg.reject_reason == (
            case["reason"].split(":")[0] if msg.status is JobStatus.REJECTED else None
        )


def test_status_from_event() -> None:
    event = JobEvent(
        job_id="j", status=JobStatus.IN_PROGRESS, ts=5.0, phase="FETCHING", step=STEPS[State.FETCHING]
    )
    msg = P.parse_status(P.status_from_event(event, seq=9))
    assert (msg.job_id, msg.status, msg.step, msg.seq, msg.ts) == (
        "j",
        JobStatus.IN_PROGRESS,
        "downloading",
        9,
        5.0,
    )


def test_status_reason_is_cut_and_cleaned() -> None:
    long = P.status_payload(job_id="j", status="FAILED", reason="x" * 5000, ts=1, seq=1)
    assert len(P.parse_status(long).reason or "") == P.MAX_REASON_CHARS
    wide = P.status_payload(job_id="j", status="FAILED", reason="\U0001f600\x01" * 1000, ts=1, seq=1)
    assert len(wide) <= P.MAX_STATUS_BYTES
    assert_valid("status", wide)
    bad_path = P.status_payload(job_id="j", status="FAILED", reason="no file /x/\udcff", ts=1, seq=1)
    assert P.parse_status(bad_path).reason == "no file /x/\\udcff"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "DONE"},
        {"status": "IN_PROGRESS"},
        {"status": "QUEUED", "step": "downloading"},
        {"status": "IN_PROGRESS", "step": "sleeping"},
        {"status": "SUCCEEDED", "detail": "rolled_back"},
        {"status": "REJECTED"},
        {"status": "REJECTED", "reason": "not signed"},
        {"status": "QUEUED", "job_id": "a/b"},
        {"status": "QUEUED", "model": "a b"},
        {"status": "QUEUED", "version": -1},
        {"status": "QUEUED", "version": True},
        {"status": "QUEUED", "ts": float("nan")},
        {"status": "QUEUED", "ts": -1},
        {"status": "QUEUED", "seq": 1.5},
    ],
)
def test_status_payload_refuses_a_callers_mistake(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"job_id": "j", "ts": 1, "seq": 1, **kwargs}
    with pytest.raises(ValueError):
        P.status_payload(**args)


def _status(**over: Any) -> dict[str, Any]:
    base = json.loads(P.status_payload(job_id="j", status="IN_PROGRESS", step="verifying", ts=1.5, seq=2))
    return {**base, **over}


STATUS_CASES: list[tuple[str, Any, str | None]] = [
    ("good", _status(), None),
    ("good-rejected", _status(status="REJECTED", step=None, reason="replay: job j was seen before"), None),
    ("good-failed-no-detail", _status(status="FAILED", step=None), None),
    ("unknown-field", _status(device="cam-1"), "device"),
    ("missing-seq", {k: v for k, v in _status().items() if k != "seq"}, "seq"),
    ("status-lower", _status(status="queued"), "status"),
    ("step-without-in-progress", _status(status="QUEUED"), "step"),
    ("no-step-in-progress", _status(step=None), "step"),
    ("detail-not-failed", _status(detail="rolled_back"), "detail"),
    ("detail-unknown", _status(status="FAILED", step=None, detail="oops"), "detail"),
    ("rejected-no-code", _status(status="REJECTED", step=None, reason="bad"), "reason"),
    ("rejected-null", _status(status="REJECTED", step=None, reason=None), "reason"),
    ("reason-long", _status(reason="r" * 1025), "reason"),
    ("reason-int", _status(reason=5), "reason"),
    ("model-bad", _status(model=""), "model"),
    ("version-float", _status(version=1.5), "version"),
    ("ts-string", _status(ts="now"), "ts"),
    ("ts-bool", _status(ts=True), "ts"),
    ("seq-negative", _status(seq=-1), "seq"),
    ("job-id-null", _status(job_id=None), "job_id"),
]


@pytest.mark.parametrize(("obj", "field"), [c[1:] for c in STATUS_CASES], ids=[c[0] for c in STATUS_CASES])
def test_status_parser_and_schema_agree(obj: Any, field: str | None) -> None:
    assert schema_ok("status", obj) == (field is None)
    if field is None:
        P.parse_status(raw(obj))
        return
    with pytest.raises(Rejected, match=f"^{field}: ") as info:
        P.parse_status(raw(obj))
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * (P.MAX_STATUS_BYTES + 1), "too_large"),
        (b"\x80", "malformed"),
        (b"[]", "malformed"),
        (raw(_status())[:-1] + b', "seq": 3}', "malformed"),
        (raw(_status()).replace(b'"ts": 1.5', b'"ts": NaN'), "malformed"),
        (raw(_status()).replace(b'"ts": 1.5', b'"ts": 1e400'), "malformed"),
        (raw(_status(reason="x")).replace(b'"x"', b'"\\udc80"'), "malformed"),
    ],
)
def test_status_parser_refuses_bad_json(payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as info:
        P.parse_status(payload)
    assert info.value.reason == reason


def _online(**over: Any) -> dict[str, Any]:
    payload = P.state_payload(
        device="cam-1",
        group="lobby",
        model="det",
        version=7,
        sha256=SHA,
        phase=State.PROBATION,
        fps=29.97,
        uptime_s=3600.5,
        agent_version="0.1.0",
        hold=False,
        window="02:00-04:00",
        ts=1_700_000_000,
    )
    return {**assert_valid("state", payload), **over}


def test_state_payloads_validate_and_parse_back() -> None:
    msg = P.parse_state(raw(_online()))
    assert msg.online and msg.device == "cam-1" and msg.group == "lobby" and msg.phase == "PROBATION"
    assert (msg.model, msg.version, msg.sha256, msg.fps, msg.hold, msg.window) == (
        "det",
        7,
        SHA,
        29.97,
        False,
        "02:00-04:00",
    )
    empty = P.state_payload(device="d", phase="IDLE", fps=0, uptime_s=0, agent_version="0.1.0", ts=0)
    assert P.parse_state(empty) == P.StateMessage(
        online=True,
        device="d",
        phase="IDLE",
        fps=0.0,
        uptime_s=0.0,
        agent_version="0.1.0",
        hold=False,
        ts=0.0,
    )
    assert_valid("state", empty)
    assert_valid("state", P.OFFLINE_STATE)
    assert P.OFFLINE_STATE == b'{"online":false}'
    assert P.parse_state(P.OFFLINE_STATE) == P.StateMessage(online=False)


STATE_CASES: list[tuple[str, Any, str | None]] = [
    ("online", _online(), None),
    ("offline", {"online": False}, None),
    ("offline-with-more", {"online": False, "device": "cam-1"}, "device"),
    ("online-missing", {k: v for k, v in _online().items() if k != "online"}, "online"),
    ("online-int", _online(online=1), "online"),
    ("online-null", {"online": None}, "online"),
    ("online-only-true", {"online": True}, "device"),
    ("unknown-field", _online(temperature=40), "temperature"),
    ("device-group", _online(device="group"), "device"),
    ("device-slash", _online(device="a/b"), "device"),
    ("group-bad", _online(group=""), "group"),
    ("sha-bad", _online(sha256="abc"), "sha256"),
    ("phase-bad", _online(phase="idle"), "phase"),
    ("fps-negative", _online(fps=-1), "fps"),
    ("fps-null", _online(fps=None), "fps"),
    ("uptime-string", _online(uptime_s="1h"), "uptime_s"),
    ("agent-version-space", _online(agent_version="0.1 beta"), "agent_version"),
    ("hold-int", _online(hold=0), "hold"),
    ("window-long", _online(window="w" * 129), "window"),
    ("ts-null", _online(ts=None), "ts"),
    ("version-string", _online(version="7"), "version"),
    ("model-long", _online(model="m" * 101), "model"),
]


@pytest.mark.parametrize(("obj", "field"), [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_state_parser_and_schema_agree(obj: Any, field: str | None) -> None:
    assert schema_ok("state", obj) == (field is None)
    if field is None:
        P.parse_state(raw(obj))
        return
    with pytest.raises(Rejected, match=f"^{field}: ") as info:
        P.parse_state(raw(obj))
    assert info.value.reason == "malformed"


def test_telemetry_payload() -> None:
    payload = P.telemetry_payload(
        ts=1_700_000_000.5, period_s=60, frames=1800, fps=30.0, latency_p50_ms=12.5, latency_p95_ms=20.25,
        dropped=3, errors=0, model="det", version=7,
    )  # fmt: skip
    obj = assert_valid("telemetry", payload)
    assert P.parse_telemetry(payload) == obj
    assert obj["frames"] == 1800 and obj["model"] == "det"
    for bad in ({"frames": -1}, {"fps": float("inf")}, {"dropped": 1.5}, {"model": "a b"}, {"version": "7"}):
        args: dict[str, Any] = {**obj, **bad}
        with pytest.raises(ValueError):
            P.telemetry_payload(**args)
        assert not schema_ok(
            "telemetry", json.loads(json.dumps(args, allow_nan=True).replace("Infinity", "1e400"))
        )


def test_numpy_numbers_are_plain_numbers_on_the_wire() -> None:
    np = pytest.importorskip("numpy")
    payload = P.telemetry_payload(
        ts=np.float64(5.0), period_s=np.float32(60.0), frames=np.int64(10), fps=np.float64(1.5),
        latency_p50_ms=np.float32(2.5), latency_p95_ms=3, dropped=np.uint8(0), errors=np.int32(0),
    )  # fmt: skip
    assert assert_valid("telemetry", payload)["frames"] == 10


def test_alert_payload() -> None:
    payload = P.alert_payload(
        ts=5, kind="retrain_suggested", message="drift on brightness: 0.31 > 0.2", model="det", version=7
    )
    obj = assert_valid("alerts", payload)
    assert P.parse_alert(payload) == obj
    long = P.alert_payload(ts=5, kind="drift", message="m\n" * 2000)
    assert len(P.parse_alert(long)["message"]) == P.MAX_MESSAGE_CHARS
    assert_valid("alerts", long)
    for kind in ("Drift", "", "a-b", "1drift"):
        with pytest.raises(ValueError, match="kind"):
            P.alert_payload(ts=5, kind=kind, message="m")
        assert not schema_ok("alerts", {**obj, "kind": kind})


# --- the drift fields of telemetry and alerts

BASE_TELEMETRY: dict[str, Any] = {
    "ts": 1_700_000_060.0, "period_s": 60.0, "frames": 1800, "fps": 30.0, "latency_p50_ms": 12.5,
    "latency_p95_ms": 20.25, "dropped": 0, "errors": 0, "model": "det", "version": 7,
}  # fmt: skip
WINDOW = {"index": 12, "start_ts": 1_700_000_000.0, "end_ts": 1_700_000_060.0, "samples": 60}


def _telemetry(**over: Any) -> dict[str, Any]:
    payload = P.telemetry_payload(
        **BASE_TELEMETRY,
        window=WINDOW,
        confidence=0.82,
        drift={"brightness:psi": [0.31, 0.2], "confidence:face:mean_shift": [-1.5, 3.0]},
        drifted=["brightness"],
        reference="bundle",
    )
    return {**assert_valid("telemetry", payload), **over}


def test_telemetry_with_drift_validates_and_parses_back() -> None:
    obj = _telemetry()
    assert P.parse_telemetry(raw(obj)) == obj
    assert obj["window"] == WINDOW and obj["confidence"] == 0.82 and obj["reference"] == "bundle"
    assert obj["drift"] == {"brightness:psi": [0.31, 0.2], "confidence:face:mean_shift": [-1.5, 3.0]}
    assert obj["drifted"] == ["brightness"]
    plain = P.telemetry_payload(**BASE_TELEMETRY)  # the old call: no drift field, not even null
    assert sorted(json.loads(plain)) == sorted(P.TELEMETRY_REQUIRED)
    learning = P.telemetry_payload(
        **BASE_TELEMETRY, window=WINDOW, drift={}, drifted=[], reference="learning"
    )
    assert P.parse_telemetry(learning)["drift"] == {}


def test_telemetry_builder_ranks_rounds_and_cuts_the_scores() -> None:
    drift: dict[str, tuple[float, float]] = {f"m{i}:psi": (i / 1000, 0.1) for i in range(100)}
    drift["sharpness:mean_shift"] = (math.inf, 3.0)  # reference sigma 0: past any threshold
    drift["contrast:js"] = (math.nan, 0.1)  # could not be computed: left out
    drift["brightness:psi"] = (0.123456789, 0.2)
    obj = assert_valid("telemetry", P.telemetry_payload(**BASE_TELEMETRY, drift=drift, confidence=math.nan))
    assert "confidence" not in obj  # NaN: no window mean to give
    keys = list(obj["drift"])
    assert len(keys) == P.MAX_DRIFT_SCORES
    assert keys[0] == "sharpness:mean_shift" and obj["drift"][keys[0]] == [P.MAX_INT, 3.0]
    assert keys[1] == "m99:psi" and "m35:psi" not in keys and "contrast:js" not in keys  # nearest first
    assert obj["drift"]["brightness:psi"] == [0.123457, 0.2]  # 6 significant digits


def test_telemetry_builder_cleans_labels_and_fits_the_size_limit() -> None:
    label = "é\t" * 200  # a label past 128 characters, with control characters, 2 bytes a character
    drift = {f"confidence:{i}{label}:psi": (1.0 + i, 0.5) for i in range(64)}
    payload = P.telemetry_payload(**BASE_TELEMETRY, drift=drift, drifted=[f"confidence:{label}"])
    obj = assert_valid("telemetry", payload)
    assert len(payload) <= P.MAX_TELEMETRY_BYTES
    assert 0 < len(obj["drift"]) < 64
    assert next(iter(obj["drift"])).startswith("confidence:63é\ufffd")  # the furthest past its threshold kept
    assert all(len(k.split(":")[1]) == P.MAX_LABEL_CHARS for k in obj["drift"])
    assert obj["drifted"] == [f"confidence:{('é' + chr(0xFFFD)) * 63}é…"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": {"index": 1, "start_ts": 0}},
        {"window": {**WINDOW, "index": -1}},
        {"drift": {"brightness": [0.1, 0.2]}},
        {"drift": {"Brightness:psi": [0.1, 0.2]}},
        {"drift": {"brightness:psi": [0.1]}},
        {"drift": {"brightness:PSI": [0.1, 0.2]}},
        {"drifted": ["Brightness"]},
        {"reference": "bundled"},
        {"confidence": "high"},
    ],
)
def test_telemetry_payload_refuses_a_callers_mistake(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        P.telemetry_payload(**BASE_TELEMETRY, **kwargs)


def _drift(n: int) -> dict[str, list[float]]:
    return {f"m{i}:psi": [0.1, 0.2] for i in range(n)}


TELEMETRY_CASES: list[tuple[str, Any, str | None]] = [
    ("good", _telemetry(), None),
    ("good-plain", dict(BASE_TELEMETRY), None),
    ("good-64-scores", _telemetry(drift=_drift(64)), None),
    (
        "good-per-class",
        _telemetry(drift={"rate:traffic light:linf": [0.5, 0.25]}, drifted=["rate:a:b"]),
        None,
    ),
    ("good-negative", _telemetry(confidence=-2.5, drift={"confidence:mean_shift": [-4, 3]}), None),
    ("good-integers", _telemetry(confidence=1, drift={"classes:linf": [1, 0]}), None),
    ("unknown-field", _telemetry(scores={}), "scores"),
    ("missing-fps", {k: v for k, v in _telemetry().items() if k != "fps"}, "fps"),
    ("window-null", _telemetry(window=None), "window"),
    ("window-list", _telemetry(window=[1, 2]), "window"),
    ("window-missing", _telemetry(window={"index": 1, "start_ts": 0, "end_ts": 1}), "window.samples"),
    ("window-extra", _telemetry(window={**WINDOW, "frames": 3}), "window.frames"),
    ("window-index-float", _telemetry(window={**WINDOW, "index": 1.5}), "window.index"),
    ("window-start-negative", _telemetry(window={**WINDOW, "start_ts": -1}), "window.start_ts"),
    ("window-samples-bool", _telemetry(window={**WINDOW, "samples": True}), "window.samples"),
    ("confidence-null", _telemetry(confidence=None), "confidence"),
    ("confidence-string", _telemetry(confidence="0.5"), "confidence"),
    ("confidence-huge", _telemetry(confidence=1e16), "confidence"),
    ("drift-list", _telemetry(drift=[["brightness:psi", 0.1, 0.2]]), "drift"),
    ("drift-65", _telemetry(drift=_drift(65)), "drift"),
    ("drift-no-score", _telemetry(drift={"brightness": [0.1, 0.2]}), "drift['brightness']"),
    ("drift-upper", _telemetry(drift={"Brightness:psi": [0.1, 0.2]}), "drift['Brightness:psi']"),
    ("drift-empty-label", _telemetry(drift={"rate::psi": [0.1, 0.2]}), "drift['rate::psi']"),
    ("drift-control", _telemetry(drift={"rate:a\nb:psi": [0.1, 0.2]}), "drift['rate:a\\nb:psi']"),
    ("drift-label-long", _telemetry(drift={f"rate:{'x' * 129}:psi": [0.1, 0.2]}), "drift["),
    ("drift-score-long", _telemetry(drift={f"rate:{'x' * 33}": [0.1, 0.2]}), "drift["),
    ("drift-one-number", _telemetry(drift={"brightness:psi": [0.1]}), "drift['brightness:psi']"),
    ("drift-three", _telemetry(drift={"brightness:psi": [0.1, 0.2, 0.3]}), "drift['brightness:psi']"),
    ("drift-null", _telemetry(drift={"brightness:psi": [None, 0.2]}), "drift['brightness:psi']"),
    ("drift-bool", _telemetry(drift={"brightness:psi": [True, 0.2]}), "drift['brightness:psi']"),
    ("drift-huge", _telemetry(drift={"brightness:psi": [0.1, -1e16]}), "drift['brightness:psi']"),
    ("drift-object", _telemetry(drift={"brightness:psi": {"value": 0.1}}), "drift['brightness:psi']"),
    ("drifted-string", _telemetry(drifted="brightness"), "drifted"),
    ("drifted-65", _telemetry(drifted=[f"m{i}" for i in range(65)]), "drifted"),
    ("drifted-twice", _telemetry(drifted=["brightness", "brightness"]), "drifted[1]"),
    ("drifted-bad", _telemetry(drifted=["brightness", "a b"]), "drifted[1]"),
    ("drifted-int", _telemetry(drifted=[1]), "drifted[0]"),
    ("reference-bad", _telemetry(reference="none"), "reference"),
    ("reference-null", _telemetry(reference=None), "reference"),
]


@pytest.mark.parametrize(
    ("obj", "field"), [c[1:] for c in TELEMETRY_CASES], ids=[c[0] for c in TELEMETRY_CASES]
)
def test_telemetry_parser_and_schema_agree(obj: Any, field: str | None) -> None:
    assert schema_ok("telemetry", obj) == (field is None)
    if field is None:
        assert P.parse_telemetry(raw(obj)) == obj
        return
    with pytest.raises(Rejected, match=f"^{re.escape(field)}") as info:
        P.parse_telemetry(raw(obj))
    assert info.value.reason == "malformed"


def test_telemetry_parser_only_rules() -> None:
    """What the schema cannot say: an integer written 1.0, a key twice, a lone surrogate."""
    for bad in (
        raw(_telemetry(window={**WINDOW, "index": 1.0})),
        raw(_telemetry()).replace(b'"drift": {', b'"drift": {"brightness:psi": [0, 0], '),
        raw(_telemetry(drift={"rate:x:psi": [0, 0]})).replace(b"rate:x", b"rate:\\udc80"),
    ):
        with pytest.raises(Rejected) as info:
            P.parse_telemetry(bad)
        assert info.value.reason == "malformed"
    assert P.parse_telemetry(raw(_telemetry(drift={"rate:😀:psi": [0, 0]})))  # a pair is fine


def _alert(**over: Any) -> dict[str, Any]:
    payload = P.alert_payload(
        ts=1_700_000_200.0,
        kind="retrain_suggested",
        message="confidence of face fell 3.1 sigma below the reference over windows 10-12",
        model="det",
        version=7,
        metric="confidence:face",
        score="mean_shift",
        value=-3.1,
        threshold=3.0,
        state="raised",
        windows=[10, 11, 12],
        start_ts=1_700_000_000.0,
        end_ts=1_700_000_180.0,
        frames=["f-0001", "f-0002"],
        reference="learned",
    )
    return {**assert_valid("alerts", payload), **over}


def test_alert_with_evidence_validates_and_parses_back() -> None:
    obj = _alert()
    assert P.parse_alert(raw(obj)) == obj
    assert (obj["metric"], obj["score"], obj["value"], obj["threshold"]) == (
        "confidence:face",
        "mean_shift",
        -3.1,
        3.0,
    )
    assert (obj["state"], obj["windows"], obj["frames"], obj["reference"]) == (
        "raised", [10, 11, 12], ["f-0001", "f-0002"], "learned",
    )  # fmt: skip
    plain = P.alert_payload(ts=5, kind="drift", message="m")  # the old call: no evidence, not even null
    assert sorted(json.loads(plain)) == sorted(P.ALERT_REQUIRED)


def test_alert_builder_keeps_the_latest_windows_and_frames() -> None:
    frames = [f"{i:064x}" for i in range(400)] + ["0" * 64]  # sha256-long ids, one twice
    payload = P.alert_payload(
        ts=5, kind="retrain_suggested", message="m" * 5000, metric="brightness", score="psi",
        value=math.inf, threshold=math.nan, windows=[*range(100), 99], frames=frames,
    )  # fmt: skip
    obj = assert_valid("alerts", payload)
    assert P.parse_alert(payload) == obj
    assert obj["windows"] == list(range(36, 100))
    assert obj["frames"] == frames[400 - P.MAX_FRAMES : 400]
    assert obj["value"] == P.MAX_INT and "threshold" not in obj  # infinite: past any; NaN: none
    for kwargs in (
        {"state": "open"},
        {"frames": ["a/b"]},
        {"score": "PSI"},
        {"windows": [-1]},
        {"metric": "x y"},
    ):
        with pytest.raises(ValueError):
            P.alert_payload(ts=5, kind="drift", message="m", **kwargs)


ALERT_CASES: list[tuple[str, Any, str | None]] = [
    ("good", _alert(), None),
    ("good-plain", json.loads(P.alert_payload(ts=5, kind="drift", message="m")), None),
    ("good-cleared", _alert(state="cleared", windows=[], frames=[]), None),
    ("good-256-frames", _alert(frames=[f"f{i}" for i in range(256)]), None),
    ("unknown-field", _alert(evidence={}), "evidence"),
    ("metric-null", _alert(metric=None), "metric"),
    ("metric-upper", _alert(metric="Brightness"), "metric"),
    ("metric-with-score", _alert(metric="brightness:"), "metric"),
    ("score-colon", _alert(score="mean:shift"), "score"),
    ("score-empty", _alert(score=""), "score"),
    ("value-string", _alert(value="3"), "value"),
    ("value-huge", _alert(value=-1e16), "value"),
    ("threshold-null", _alert(threshold=None), "threshold"),
    ("state-bad", _alert(state="RAISED"), "state"),
    ("windows-object", _alert(windows={"0": 1}), "windows"),
    ("windows-65", _alert(windows=list(range(65))), "windows"),
    ("windows-negative", _alert(windows=[1, -1]), "windows[1]"),
    ("windows-float", _alert(windows=[1.5]), "windows[0]"),
    ("windows-twice", _alert(windows=[3, 3]), "windows[1]"),
    ("start-negative", _alert(start_ts=-5), "start_ts"),
    ("end-string", _alert(end_ts="later"), "end_ts"),
    ("frames-257", _alert(frames=[f"f{i}" for i in range(257)]), "frames"),
    ("frames-bad-id", _alert(frames=["f1", "../x"]), "frames[1]"),
    ("frames-long-id", _alert(frames=["f" * 65]), "frames[0]"),
    ("frames-twice", _alert(frames=["f1", "f1"]), "frames[1]"),
    ("reference-bad", _alert(reference="reference"), "reference"),
]


@pytest.mark.parametrize(("obj", "field"), [c[1:] for c in ALERT_CASES], ids=[c[0] for c in ALERT_CASES])
def test_alert_parser_and_schema_agree(obj: Any, field: str | None) -> None:
    assert schema_ok("alerts", obj) == (field is None)
    if field is None:
        assert P.parse_alert(raw(obj)) == obj
        return
    with pytest.raises(Rejected, match=f"^{re.escape(field)}: ") as info:
        P.parse_alert(raw(obj))
    assert info.value.reason == "malformed"


def test_event_payload() -> None:
    dets: list[Detection | dict[str, Any]] = [
        Detection("face", 0.9, (1.0, 2.0, 3.0, 4.0)),
        {"label": "person", "score": 0.95, "box": [0, 0, 10, 10]},
        Detection("ghost", float("nan"), (0.0, 0.0, 1.0, 1.0)),
        Detection("far", 0.5, (0.0, 0.0, float("inf"), 1.0)),
    ]
    payload = P.event_payload(ts=5.25, frame=120, kind="detections", detections=dets, model="det", version=7)
    obj = assert_valid("events", payload)
    assert P.parse_event(payload) == obj
    assert [d["label"] for d in obj["detections"]] == ["person", "face"]  # best first; non-finite left out
    many = [Detection("x" * 500, i / 1000, (0.0, 0.0, 1.0, 1.0)) for i in range(1000)]  # labels cut to 128
    big = P.event_payload(ts=1, frame=1, kind="detections", detections=many)
    obj = assert_valid("events", big)
    assert len(obj["detections"]) == P.MAX_DETECTIONS and obj["detections"][0]["score"] == 0.999
    assert all(len(d["label"]) == P.MAX_LABEL_CHARS for d in obj["detections"])
    wide = [Detection("\x00" * 128, 0.5, (0.0, 0.0, 1.0, 1.0))] * 256  # 6 bytes a character in JSON
    obj = assert_valid("events", P.event_payload(ts=1, frame=1, kind="detections", detections=wide))
    assert 0 < len(obj["detections"]) < 256
    assert P.parse_event(P.event_payload(ts=1, frame=1, kind="detections", detections=[]))["detections"] == []


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"detections": [{"label": "a", "score": 1, "box": [1, 2, 3]}]}, "detections[0].box"),
        ({"detections": [{"label": "a", "score": "1", "box": [1, 2, 3, 4]}]}, "detections[0].score"),
        ({"detections": [{"label": 1, "score": 1, "box": [1, 2, 3, 4]}]}, "detections[0].label"),
        ({"detections": [{"label": "a", "score": 1, "box": [1, 2, 3, 4], "id": 1}]}, "detections[0].id"),
        ({"detections": [{"label": "a", "box": [1, 2, 3, 4]}]}, "detections[0].score"),
        ({"detections": [[]]}, "detections[0]"),
        ({"detections": {}}, "detections"),
        ({"frame": -1}, "frame"),
        ({"kind": None}, "kind"),
    ],
)
def test_event_parser_and_schema_agree_on_bad_events(obj: dict[str, Any], field: str) -> None:
    good = json.loads(P.event_payload(ts=1, frame=1, kind="detections", detections=[]))
    bad = {**good, **obj}
    assert not schema_ok("events", bad)
    with pytest.raises(Rejected, match=f"^{re.escape(field)}: "):
        P.parse_event(raw(bad))


# ---------------------------------------------------------------------------- the schemas themselves


@pytest.mark.parametrize("name", P.SCHEMAS)
def test_schemas_are_draft_2020_12_and_closed(name: str) -> None:
    schema = P.load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)

    def objects(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    def closed(o: dict[str, Any]) -> bool:
        """No field the parser does not know: a record lists its fields; a map (telemetry's
        ``drift``) bounds its keys by a pattern and their number."""
        if "propertyNames" in o:
            return "pattern" in o["propertyNames"] and "maxProperties" in o and "properties" not in o
        if name == "job" and o is schema["properties"]["sampling"]:
            return True  # a [sampling] table: the device judges its keys (REJECTED invalid_policy)
        return o.get("additionalProperties") is False

    found = list(objects(schema))
    assert found and all(closed(o) for o in found)


def test_load_schema_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="no schema"):
        P.load_schema("../pyproject")


def test_schemas_carry_the_modules_constants() -> None:
    """One set of rules: the schema files say what the parser's constants say."""
    job, status, state = P.load_schema("job"), P.load_schema("status"), P.load_schema("state")
    props = job["properties"]
    anchored = {
        "id": (job["$defs"]["id"]["pattern"], P.ID_RE),
        "nonce": (props["nonce"]["pattern"], P.NONCE_RE),
        "url": (props["manifest_url"]["pattern"], P.URL_RE),
        "sha": (props["manifest_sha256"]["pattern"], P.SHA256_RE),
        "key_id": (props["key_id"]["pattern"], P.KEY_ID_RE),
        "signature": (props["signature"]["pattern"], P.SIGNATURE_RE),
        "model": (status["$defs"]["model"]["anyOf"][0]["pattern"], P.MODEL_RE),
        "agent_version": (
            state["$defs"]["online"]["properties"]["agent_version"]["pattern"],
            P.AGENT_VERSION_RE,
        ),
    }
    for name, (pattern, regex) in anchored.items():
        assert pattern == f"^{regex.pattern}$", name
    assert props["action"]["enum"] == list(P.JOB_ACTIONS)
    assert sorted(props) == sorted(P.JOB_FIELDS)
    assert job["$defs"]["uint"]["maximum"] == P.MAX_INT
    assert props["manifest_url"]["maxLength"] == P.MAX_URL_CHARS
    assert job["properties"]["target"]["oneOf"][0]["properties"]["devices"]["maxItems"] == P.MAX_DEVICES
    assert (props["frames"]["minimum"], props["frames"]["maximum"]) == (1, P.MAX_CAPTURE_FRAMES)
    sp = status["properties"]
    assert sp["status"]["enum"] == list(P.STATUSES) == [s.value for s in JobStatus]
    assert sp["step"]["enum"] == [*P.STEP_NAMES, None]
    assert sp["detail"]["enum"] == [*P.DETAILS, None]
    assert sp["reason"]["maxLength"] == P.MAX_REASON_CHARS
    codes = status["allOf"][2]["then"]["properties"]["reason"]["pattern"]
    assert codes == "^(" + "|".join(REJECT_REASONS) + "): "
    assert sorted(sp) == sorted(P.STATUS_FIELDS)
    online = state["$defs"]["online"]["properties"]
    assert online["phase"]["enum"] == list(P.PHASES) == [s.value for s in State]
    assert sorted(online) == sorted(P.STATE_FIELDS)
    telemetry, alerts = P.load_schema("telemetry"), P.load_schema("alerts")
    tp, ap = telemetry["properties"], alerts["properties"]
    assert sorted(tp) == sorted(P.TELEMETRY_FIELDS)
    assert telemetry["required"] == list(P.TELEMETRY_REQUIRED)
    assert sorted(ap) == sorted(P.ALERT_FIELDS)
    assert alerts["required"] == list(P.ALERT_REQUIRED)
    metric = f"^{P.METRIC_RE.pattern}$"
    assert telemetry["$defs"]["metric"]["pattern"] == ap["metric"]["pattern"] == metric
    assert tp["drift"]["propertyNames"]["pattern"] == f"^{P.DRIFT_KEY_RE.pattern}$"
    assert P.DRIFT_KEY_RE.pattern == f"{P.METRIC_RE.pattern}:{P.SCORE_RE.pattern}"
    assert ap["score"]["pattern"] == f"^{P.SCORE_RE.pattern}$"
    assert ap["frames"]["items"]["pattern"] == f"^{P.ID_RE.pattern}$"
    assert tp["drift"]["maxProperties"] == tp["drifted"]["maxItems"] == P.MAX_DRIFT_SCORES
    assert ap["windows"]["maxItems"] == P.MAX_WINDOWS and ap["frames"]["maxItems"] == P.MAX_FRAMES
    assert tp["reference"]["enum"] == ap["reference"]["enum"] == list(P.REFERENCES)
    assert ap["state"]["enum"] == list(P.ALERT_STATES)
    assert sorted(tp["window"]["properties"]) == sorted(P.WINDOW_FIELDS) == sorted(tp["window"]["required"])
    for schema in (telemetry, alerts):
        assert schema["$defs"]["finite"]["maximum"] == -schema["$defs"]["finite"]["minimum"] == P.MAX_INT
    assert f"At most {P.MAX_TELEMETRY_BYTES} bytes" in telemetry["description"]
    assert f"At most {P.MAX_ALERT_BYTES} bytes" in alerts["description"]
    events = P.load_schema("events")
    assert sorted(events["properties"]) == sorted(P.EVENT_FIELDS)
    assert events["properties"]["detections"]["maxItems"] == P.MAX_DETECTIONS


def test_canonical_json() -> None:
    assert P.canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    with pytest.raises(Rejected) as err:
        P.canonical_json({"x": float("nan")})
    assert err.value.reason == "malformed"


def test_a_job_signed_by_the_trust_module_parses_and_verifies() -> None:
    """The fleet's signer (ota.trust) and this parser agree on what is signed and on key ids."""
    from ota.trust import canonical_json as trust_canonical_json
    from ota.trust import sign_object

    job = sign_object(deploy(), PRIVATE)
    msg = P.parse_job(trust_canonical_json(job))
    assert msg.key_id == KEY_ID
    assert msg.signed_bytes() == trust_canonical_json(msg.body)
    PRIVATE.public_key().verify(base64.b64decode(msg.signature), msg.signed_bytes())


# ---------------------------------------------------------------------------- docs/protocol.md

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _json_examples() -> list[Any]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [json.loads(b) for b in blocks]


def test_every_json_example_in_the_docs_is_valid() -> None:
    examples = _json_examples()
    assert len(examples) >= 9
    kinds = set()
    for obj in examples:
        if set(obj) == {"key_id", "signature"}:  # manifest.sig
            assert P.KEY_ID_RE.fullmatch(obj["key_id"]) and P.SIGNATURE_RE.fullmatch(obj["signature"])
            kinds.add("manifest.sig")
            continue
        valid = [name for name in P.SCHEMAS if schema_ok(name, obj)]
        assert len(valid) == 1, (obj, valid)
        kinds.add(valid[0])
        parse = {
            "job": P.parse_job,
            "status": P.parse_status,
            "state": P.parse_state,
            "telemetry": P.parse_telemetry,
            "alerts": P.parse_alert,
            "events": P.parse_event,
        }[valid[0]]
        parse(json.dumps(obj).encode())
    assert kinds == {*P.SCHEMAS, "manifest.sig"}


def test_the_docs_name_every_schema_reason_step_and_phase() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in P.SCHEMAS:
        assert f"ota/schemas/{name}.schema.json" in text, name
    for code in REJECT_REASONS:
        assert f"| `{code}` |" in text, code
    drift_words = (*P.TELEMETRY_FIELDS, *P.WINDOW_FIELDS, *P.ALERT_FIELDS, *P.REFERENCES, *P.ALERT_STATES)
    for word in (
        *P.STEP_NAMES,
        *P.DETAILS,
        *P.PHASES,
        *P.STATUSES,
        *P.JOB_ACTIONS,
        *P.JOB_FIELDS,
        *drift_words,
    ):
        assert f"`{word}`" in text, word

"""Fuzzed protocol payloads (ota/protocol.py): the broker carries anyone's bytes.

What these prove, over thousands of generated payloads:
- random bytes, random JSON values, huge strings and deep nesting given to every parser:
  only ``Rejected`` escapes, always with a known reason code and a message;
- a valid job with one field deleted, replaced or added: ``Rejected`` or parsed, never another
  error, and the job schema gives the same verdict as ``parse_job`` unless one of the rules a
  schema cannot state applies (the same for statuses and states);
- a valid job survives the round trip (bytes → JobMessage → bytes → the same JobMessage,
  ``signed_bytes`` = canonical JSON of what was signed), and so does every status the
  builders make, whatever text its reason holds.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota import protocol as P
from ota.errors import REJECT_REASONS, Rejected
from tests.test_protocol import (
    _alert,
    _online,
    _status,
    _telemetry,
    capture,
    deploy,
    pin,
    rollback,
    sampling,
    schema_ok,
)

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARSERS: dict[str, Callable[[bytes], object]] = {
    "job": P.parse_job,
    "status": P.parse_status,
    "state": P.parse_state,
    "telemetry": P.parse_telemetry,
    "alerts": P.parse_alert,
    "events": P.parse_event,
}
LIMITS = {
    "job": P.MAX_JOB_BYTES,
    "status": P.MAX_STATUS_BYTES,
    "state": P.MAX_STATE_BYTES,
    "telemetry": P.MAX_TELEMETRY_BYTES,
    "alerts": P.MAX_ALERT_BYTES,
    "events": P.MAX_EVENT_BYTES,
}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
#: Values next to the edges of the rules: boundaries, near-miss types and shapes.
EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    1.0,
    1.5,
    -0.0,
    P.MAX_INT,
    P.MAX_INT + 1,
    2**64,
    1e300,
    "",
    " ",
    "group",
    "a",
    "a" * 64,
    "a" * 65,
    "A" * 16,
    "0" * 16,
    "0" * 64,
    "f" * 64,
    "F" * 64,
    "deploy",
    "pin",
    "x/y",
    "+",
    "#",
    "http://h/m",
    "https://",
    "é",
    "\n",
    "a\n",
    [],
    [None],
    ["a"],
    ["a", "a"],
    {},
    {"group": "g"},
    {"devices": []},
    {"devices": ["group"]},
    {"devices": ["a"], "group": "g"},
    "IN_PROGRESS",
    "REJECTED",
    "downloading",
    "rolled_back",
    "malformed: x",
    "IDLE",
]
EDGY = st.sampled_from(EDGE_VALUES)
#: One branch per JSON type, so a boolean or a float lands in an integer field often.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    EDGY,
    EDGY,
    JSON,
)

# Alphabet-built strategies (from_regex is several times slower); each is checked against
# its regex in test_strategies_make_what_the_rules_allow.
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _joined(first: str, rest: str, max_rest: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(alphabet=rest, max_size=max_rest))


def _hex(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n // 2, max_size=n // 2).map(bytes.hex)


ids = _joined(ALNUM, ALNUM + "._-", 63)
device_ids = ids.filter(lambda s: s != "group")
models = _joined(ALNUM, ALNUM + "._+-", 99)
nonces = st.text(alphabet=ALNUM + "_-", min_size=16, max_size=64)
urls = st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(("http", "https")),
    st.text(alphabet=PRINTABLE.replace("/", "").replace("?", "").replace("#", ""), min_size=1, max_size=40),
    st.just("")
    | st.builds(lambda a, b: a + b, st.sampled_from("/?#"), st.text(alphabet=PRINTABLE, max_size=200)),
)
agent_versions = st.text(alphabet=PRINTABLE, min_size=1, max_size=64)
uints = st.integers(0, P.MAX_INT)
LOWER = "abcdefghijklmnopqrstuvwxyz"
#: Class labels: anything but C0 controls and DEL (C1 controls, emoji, ':' and spaces are fine).
labels = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=[*map(chr, range(32)), "\x7f"]),
    min_size=1,
    max_size=128,
)
families = _joined(LOWER, LOWER + "0123456789_", 63)
metrics = st.builds(lambda f, label: f if label is None else f"{f}:{label}", families, st.none() | labels)
scores = _joined(LOWER, LOWER + "0123456789_", 31)
finites = (
    st.floats(-1e6, 1e6) | st.integers(-(2**40), 2**40) | st.sampled_from((math.inf, -math.inf, math.nan))
)
timestamps = st.floats(0, 4e9)


@st.composite
def telemetries(draw: st.DrawFn) -> dict[str, Any]:
    """The keyword arguments of a telemetry message with any of its drift fields."""
    kwargs: dict[str, Any] = {
        "ts": draw(timestamps), "period_s": draw(st.floats(0, 3600)), "frames": draw(uints),
        "fps": draw(st.floats(0, 1000)), "latency_p50_ms": draw(st.floats(0, 1e4)),
        "latency_p95_ms": draw(st.floats(0, 1e4)), "dropped": draw(uints), "errors": draw(uints),
        "model": draw(st.none() | models), "version": draw(st.none() | uints),
    }  # fmt: skip
    optional = {
        "window": st.fixed_dictionaries(
            {"index": uints, "start_ts": timestamps, "end_ts": timestamps, "samples": uints}
        ),
        "confidence": finites,
        "drift": st.dictionaries(
            st.builds(lambda m, s: f"{m}:{s}", metrics, scores), st.tuples(finites, finites), max_size=80
        ),
        "drifted": st.lists(metrics, max_size=80),
        "reference": st.sampled_from(P.REFERENCES),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            kwargs[key] = draw(strategy)
    return kwargs


@st.composite
def alerts(draw: st.DrawFn) -> dict[str, Any]:
    """The keyword arguments of an alert with any of its evidence."""
    kwargs: dict[str, Any] = {
        "ts": draw(timestamps), "kind": draw(_joined(LOWER, LOWER + "0123456789_", 63)),
        "message": draw(st.text(max_size=1500)), "model": draw(st.none() | models),
        "version": draw(st.none() | uints),
    }  # fmt: skip
    optional = {
        "metric": metrics,
        "score": scores,
        "value": finites,
        "threshold": finites,
        "state": st.sampled_from(P.ALERT_STATES),
        "windows": st.lists(uints, max_size=100),
        "start_ts": timestamps,
        "end_ts": timestamps,
        "frames": st.lists(ids, max_size=300),
        "reference": st.sampled_from(P.REFERENCES),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            kwargs[key] = draw(strategy)
    return kwargs


#: Sampling policies: any JSON object within the depth limit (the device judges the keys).
policies = st.dictionaries(st.text(max_size=12), JSON, max_size=4).filter(
    lambda v: P._depth(v) <= P.MAX_SAMPLING_DEPTH
)


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid signed job (the signature has the right form; nothing here checks it)."""
    action = draw(st.sampled_from(P.JOB_ACTIONS))
    issued = draw(st.integers(0, P.MAX_INT - 1))
    devices = draw(st.none() | st.lists(device_ids, min_size=1, max_size=12, unique=True))
    job = P.build_job(
        job_id=draw(ids),
        action=action,
        devices=devices,
        group=draw(ids) if devices is None else None,
        issued_at=issued,
        expires_at=draw(st.integers(issued + 1, P.MAX_INT)),
        nonce=draw(nonces),
        manifest_url=draw(urls) if action == "deploy" else None,
        manifest_sha256=draw(_hex(64)) if action == "deploy" else None,
        release_counter=draw(st.none() | uints) if action == "deploy" else None,
        version=draw(st.none() | uints) if action == "pin" else None,
        sampling=draw(policies) if action == "sampling" else None,
        frames=draw(st.integers(1, P.MAX_CAPTURE_FRAMES)) if action == "capture" else None,
    )
    job["key_id"] = draw(_hex(16))
    job["signature"] = base64.b64encode(draw(st.binary(min_size=64, max_size=64))).decode("ascii")
    return job


def _status_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(P.STATUSES))
    reason = draw(st.none() | st.text(max_size=3000))
    if status == "REJECTED":
        reason = f"{draw(st.sampled_from(REJECT_REASONS))}: {reason or ''}"
    return {
        "job_id": draw(ids),
        "status": status,
        "step": draw(st.sampled_from(P.STEP_NAMES)) if status == "IN_PROGRESS" else None,
        "detail": draw(st.none() | st.sampled_from(P.DETAILS)) if status == "FAILED" else None,
        "reason": reason,
        "model": draw(st.none() | models),
        "version": draw(st.none() | uints),
        "ts": draw(st.floats(0, 4e9) | st.integers(0, 2**40)),
        "seq": draw(uints),
    }


statuses = st.composite(_status_kwargs)()


@st.composite
def states(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return P.OFFLINE_STATE
    return P.state_payload(
        device=draw(device_ids),
        group=draw(st.none() | ids),
        model=draw(st.none() | models),
        version=draw(st.none() | uints),
        sha256=draw(st.none() | _hex(64)),
        phase=draw(st.sampled_from(P.PHASES)),
        fps=draw(st.floats(0, 1000)),
        uptime_s=draw(st.floats(0, 1e9)),
        agent_version=draw(agent_versions),
        hold=draw(st.booleans()),
        window=draw(st.none() | st.text(max_size=200)),
        ts=draw(st.floats(0, 4e9)),
    )


# ---------------------------------------------------------------------------- helpers


def parse(kind: str, payload: bytes) -> bool:
    """True when ``payload`` parses; False when it is ``Rejected``. Anything else fails the test."""
    try:
        PARSERS[kind](payload)
    except Rejected as err:
        assert err.reason in REJECT_REASONS and str(err), err
        if len(payload) > LIMITS[kind]:
            assert err.reason == "too_large"
        return False
    return True


def _integral_float(value: object) -> bool:
    return isinstance(value, float) and value.is_integer() and 0 <= value <= P.MAX_INT


def parser_only_rule_applies(kind: str, obj: dict[str, Any], payload: bytes) -> bool:
    """True when ``obj`` breaks a rule only the parser can check (documented in the schemas)."""
    if len(payload) > LIMITS[kind]:
        return True
    ints = {
        "job": ("issued_at", "expires_at", "release_counter", "version", "frames"),
        "status": ("version", "seq"),
        "state": ("version",),
        "telemetry": ("frames", "dropped", "errors", "version"),
        "alerts": ("version",),
    }[kind]
    if any(_integral_float(obj.get(k)) for k in ints):
        return True
    window, windows = obj.get("window"), obj.get("windows")
    if isinstance(window, dict) and any(_integral_float(window.get(k)) for k in ("index", "samples")):
        return True
    if isinstance(windows, list) and any(_integral_float(w) for w in windows):
        return True
    if kind == "job":
        issued, expires = obj.get("issued_at"), obj.get("expires_at")
        numbers = all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in (issued, expires))
        if numbers and expires <= issued:  # type: ignore[operator]
            return True
        if P._depth(obj.get("sampling")) > P.MAX_SAMPLING_DEPTH:
            return True
    return False


def assert_agree(kind: str, obj: dict[str, Any]) -> None:
    payload = json.dumps(obj).encode()
    accepted = parse(kind, payload)
    if accepted or not parser_only_rule_applies(kind, obj, payload):
        assert schema_ok(kind, obj) == accepted, (kind, obj)


def mutate(draw: st.DrawFn, obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out = dict(obj)
    key = draw(
        st.sampled_from(fields)
        if draw(st.integers(0, 4))
        else st.sampled_from(("extra", "")) | st.text(max_size=8)
    )
    how = draw(st.sampled_from(("delete", "replace", "replace")))
    if how == "delete":
        out.pop(key, None)
    else:
        out[key] = draw(VALUES)
    return out


# ---------------------------------------------------------------------------- anything at all


@FEW
@given(ids, models, nonces, urls, agent_versions, _hex(64), _hex(16))
def test_strategies_make_what_the_rules_allow(
    id_: str, model: str, nonce: str, url: str, agent_version: str, sha: str, key_id: str
) -> None:
    for regex, value in (
        (P.ID_RE, id_), (P.MODEL_RE, model), (P.NONCE_RE, nonce), (P.URL_RE, url),
        (P.AGENT_VERSION_RE, agent_version), (P.SHA256_RE, sha), (P.KEY_ID_RE, key_id),
    ):  # fmt: skip
        assert regex.fullmatch(value), (regex.pattern, value)


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=2048))
def test_random_bytes(kind: str, data: bytes) -> None:
    parse(kind, data)


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), JSON)
def test_random_json(kind: str, value: Any) -> None:
    parse(kind, json.dumps(value).encode())


@FUZZ
@given(
    st.sampled_from(sorted(PARSERS)),
    st.text(alphabet='{}[]":,0123456789.eE-+ \\tnulrsafINaybd', max_size=200),
)
def test_json_like_text(kind: str, text: str) -> None:
    """Near-JSON: numbers with exponents, constants, escapes, unbalanced brackets."""
    parse(kind, text.encode())


@FEW
@given(
    st.sampled_from(sorted(PARSERS)),
    st.integers(1, 60_000),
    st.sampled_from(("[", '{"a":', '{"job_id":[', "[{", '{"detections":[')),
    st.booleans(),
)
def test_deep_nesting(kind: str, depth: int, opener: str, closed: bool) -> None:
    closer = "".join("]" if c == "[" else "}" for c in reversed(opener)) if closed else ""
    parse(kind, (opener * depth + "1" + closer * depth).encode())


@FEW
@given(
    jobs(),
    st.sampled_from((*P.JOB_FIELDS, "extra")),
    st.integers(1_000, 70_000),
    st.sampled_from('aé\x00"\\😀/'),
)
def test_huge_strings(job: dict[str, Any], key: str, size: int, char: str) -> None:
    job[key] = char * size
    payload = json.dumps(job, ensure_ascii=False).encode()
    assert not parse("job", payload)
    for kind in ("status", "state", "alerts"):
        parse(kind, payload)


@FEW
@given(
    st.sampled_from(sorted(PARSERS)),
    st.integers(1, 20_000),
    st.sampled_from(("1", "-1", "1.5e", "0.", "9e9")),
)
def test_huge_numbers(kind: str, digits: int, tail: str) -> None:
    parse(kind, ('{"ts":' + "9" * digits + tail + "}").encode())
    parse(kind, ('{"issued_at":' + "9" * digits + tail + "}").encode())


# ---------------------------------------------------------------------------- one thing wrong


@st.composite
def mutated_jobs(draw: st.DrawFn) -> dict[str, Any]:
    job = draw(jobs())
    if draw(st.integers(0, 3)) == 0:  # inside the target
        target = mutate(draw, job["target"], ("devices", "group"))
        if (
            "devices" in target
            and isinstance(target["devices"], list)
            and target["devices"]
            and draw(st.booleans())
        ):
            devices = list(target["devices"])
            devices[draw(st.integers(0, max(0, len(devices) - 1)))] = draw(VALUES)
            target["devices"] = devices
        job["target"] = target
        return job
    return mutate(draw, job, P.JOB_FIELDS)


@FUZZ
@given(mutated_jobs())
def test_job_with_one_thing_wrong(job: dict[str, Any]) -> None:
    assert_agree("job", job)


@FUZZ
@given(statuses, st.data())
def test_status_with_one_thing_wrong(kwargs: dict[str, Any], data: st.DataObject) -> None:
    obj = json.loads(P.status_payload(**kwargs))
    assert_agree("status", data.draw(st.composite(lambda draw: mutate(draw, obj, P.STATUS_FIELDS))()))


@FUZZ
@given(states(), st.data())
def test_state_with_one_thing_wrong(payload: bytes, data: st.DataObject) -> None:
    obj = json.loads(payload)
    assert_agree("state", data.draw(st.composite(lambda draw: mutate(draw, obj, P.STATE_FIELDS))()))


@FUZZ
@given(telemetries(), st.data())
def test_telemetry_with_one_thing_wrong(kwargs: dict[str, Any], data: st.DataObject) -> None:
    obj = json.loads(P.telemetry_payload(**kwargs))
    where = data.draw(st.sampled_from(("top", "window", "drift")))
    if where == "window" and "window" in obj:
        obj["window"] = data.draw(st.composite(lambda draw: mutate(draw, obj["window"], P.WINDOW_FIELDS))())
    elif where == "drift" and obj.get("drift"):
        key = data.draw(st.sampled_from(sorted(obj["drift"])))
        pair = list(obj["drift"][key])
        pair[data.draw(st.integers(0, 1))] = data.draw(VALUES)
        obj["drift"] = {**obj["drift"], data.draw(st.just(key) | st.text(max_size=12)): pair}
    else:
        obj = data.draw(st.composite(lambda draw: mutate(draw, obj, P.TELEMETRY_FIELDS))())
    assert_agree("telemetry", obj)


@FUZZ
@given(alerts(), st.data())
def test_alert_with_one_thing_wrong(kwargs: dict[str, Any], data: st.DataObject) -> None:
    obj = json.loads(P.alert_payload(**kwargs))
    for key in ("windows", "frames"):
        if obj.get(key) and data.draw(st.integers(0, 3)) == 0:
            items = list(obj[key])
            items[data.draw(st.integers(0, len(items) - 1))] = data.draw(VALUES)
            obj[key] = items
            assert_agree("alerts", obj)
            return
    assert_agree("alerts", data.draw(st.composite(lambda draw: mutate(draw, obj, P.ALERT_FIELDS))()))


def test_every_field_with_every_edge_value() -> None:
    """Exhaustive where random mutation is thin: each field of a few valid messages deleted
    or replaced by each edge value (a bool where an integer goes, 1.0, 2**53, "group", ...)."""
    bases: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
        ("job", deploy(), P.JOB_FIELDS),
        ("job", deploy(target={"group": "g"}), P.JOB_FIELDS),
        ("job", pin(), P.JOB_FIELDS),
        ("job", rollback(), P.JOB_FIELDS),
        ("job", sampling(), P.JOB_FIELDS),
        ("job", capture(), P.JOB_FIELDS),
        ("status", _status(), P.STATUS_FIELDS),
        ("status", _status(status="REJECTED", step=None, reason="replay: seen"), P.STATUS_FIELDS),
        ("status", _status(status="FAILED", step=None, detail="rolled_back"), P.STATUS_FIELDS),
        ("state", _online(), P.STATE_FIELDS),
        ("telemetry", _telemetry(), P.TELEMETRY_FIELDS),
        ("alerts", _alert(), P.ALERT_FIELDS),
    ]
    checked = 0
    for kind, base, fields in bases:
        for key in (*fields, "extra"):
            assert_agree(kind, {k: v for k, v in base.items() if k != key})
            for value in EDGE_VALUES:
                assert_agree(kind, {**base, key: value})
                checked += 1
        if kind == "job":
            for value in EDGE_VALUES:
                target = {"devices": [value]} if "devices" in base["target"] else {"group": value}
                assert_agree(kind, {**base, "target": target})
                assert_agree(kind, {**base, "target": {**base["target"], "extra": value}})
        if kind == "telemetry":
            for key in (*P.WINDOW_FIELDS, "extra"):
                window = {k: v for k, v in base["window"].items() if k != key}
                assert_agree(kind, {**base, "window": window})
                for value in EDGE_VALUES:
                    assert_agree(kind, {**base, "window": {**base["window"], key: value}})
            for value in EDGE_VALUES:
                assert_agree(kind, {**base, "drift": {"brightness:psi": [value, 0.5]}})
                if isinstance(value, str):
                    assert_agree(kind, {**base, "drift": {value: [0.1, 0.5]}})
                assert_agree(kind, {**base, "drifted": [value]})
        if kind == "alerts":
            for value in EDGE_VALUES:
                assert_agree(kind, {**base, "windows": [1, value]})
                assert_agree(kind, {**base, "frames": ["f1", value]})
    assert checked > 5000


# ---------------------------------------------------------------------------- round trips


@FUZZ
@given(jobs(), st.booleans())
def test_valid_job_round_trip(job: dict[str, Any], ascii_only: bool) -> None:
    payload = json.dumps(job, ensure_ascii=ascii_only, indent=None if ascii_only else 1).encode()
    msg = P.parse_job(payload)
    assert msg.to_json() == job
    body = {k: v for k, v in job.items() if k != "signature"}
    assert msg.body == body and msg.signed_bytes() == P.canonical_json(body)
    assert dict(msg.target) == job["target"]
    assert (msg.job_id, msg.action, msg.nonce, msg.issued_at, msg.expires_at) == (
        job["job_id"], job["action"], job["nonce"], job["issued_at"], job["expires_at"],
    )  # fmt: skip
    assert (msg.manifest_url, msg.release_counter, msg.version, msg.sampling, msg.frames) == (
        job.get("manifest_url"), job.get("release_counter"), job.get("version"), job.get("sampling"),
        job.get("frames"),
    )  # fmt: skip
    assert P.parse_job(P.canonical_json(msg.to_json())) == msg
    assert schema_ok("job", job)


@FUZZ
@given(statuses)
def test_status_round_trip(kwargs: dict[str, Any]) -> None:
    payload = P.status_payload(**kwargs)
    assert len(payload) <= P.MAX_STATUS_BYTES
    msg = P.parse_status(payload)
    assert schema_ok("status", json.loads(payload))
    assert (msg.job_id, msg.status.value, msg.step, msg.detail, msg.model, msg.version, msg.seq) == (
        kwargs["job_id"], kwargs["status"], kwargs["step"], kwargs["detail"], kwargs["model"],
        kwargs["version"], kwargs["seq"],
    )  # fmt: skip
    if kwargs["reason"] is not None and len(kwargs["reason"]) <= 500:
        assert msg.reason == kwargs["reason"]
    if msg.status.value == "REJECTED":
        assert msg.reject_reason in REJECT_REASONS


@FUZZ
@given(states())
def test_state_round_trip(payload: bytes) -> None:
    msg = P.parse_state(payload)
    obj = json.loads(payload)
    assert schema_ok("state", obj)
    assert msg.online == obj["online"] and msg.device == obj.get("device") and msg.window == obj.get("window")


@FEW
@given(
    st.text(max_size=3000) | st.text(alphabet=st.characters(categories=["Cs", "Cc", "So"]), max_size=1500),
    st.sampled_from(P.STATUSES),
)
def test_any_reason_text_makes_a_status_that_parses(reason: str, status: str) -> None:
    """Reasons come from exceptions: paths with undecodable bytes, control characters, emoji."""
    if status == "REJECTED":
        reason = "malformed: " + reason
    step = "verifying" if status == "IN_PROGRESS" else None
    payload = P.status_payload(job_id="j", status=status, step=step, reason=reason, ts=1, seq=1)
    assert P.parse_status(payload).status.value == status
    assert schema_ok("status", json.loads(payload))


@FUZZ
@given(telemetries())
def test_telemetry_round_trip(kwargs: dict[str, Any]) -> None:
    payload = P.telemetry_payload(**kwargs)
    assert len(payload) <= P.MAX_TELEMETRY_BYTES
    obj = P.parse_telemetry(payload)
    assert schema_ok("telemetry", obj) and obj == json.loads(payload)
    assert obj["frames"] == kwargs["frames"] and obj["model"] == kwargs["model"]
    assert ("window" in obj) == ("window" in kwargs) and ("reference" in obj) == ("reference" in kwargs)
    if "drift" in kwargs:
        computable = {k for k, (v, t) in kwargs["drift"].items() if not (math.isnan(v) or math.isnan(t))}
        assert len(obj["drift"]) <= min(len(computable), P.MAX_DRIFT_SCORES)
        if all(len(k.encode()) < 150 for k in computable) and len(computable) <= P.MAX_DRIFT_SCORES:
            assert set(obj["drift"]) == computable  # short keys all fit: none lost, none renamed
    if "drifted" in kwargs:
        assert len(obj["drifted"]) <= min(len(set(kwargs["drifted"])), P.MAX_DRIFT_SCORES)


@FUZZ
@given(alerts())
def test_alert_round_trip(kwargs: dict[str, Any]) -> None:
    payload = P.alert_payload(**kwargs)
    assert len(payload) <= P.MAX_ALERT_BYTES
    obj = P.parse_alert(payload)
    assert schema_ok("alerts", obj) and obj == json.loads(payload)
    if "metric" in kwargs:
        assert obj["metric"] == kwargs["metric"]
    if "frames" in kwargs:
        assert obj["frames"] == list(dict.fromkeys(kwargs["frames"]))[-P.MAX_FRAMES :]
    if "windows" in kwargs:
        assert obj["windows"] == list(dict.fromkeys(kwargs["windows"]))[-P.MAX_WINDOWS :]
    for key in ("value", "threshold"):
        if key in kwargs:
            v = kwargs[key]
            assert (key in obj) == (not math.isnan(v))
            if key in obj and math.isfinite(v):
                assert obj[key] == pytest.approx(v, rel=1e-5)

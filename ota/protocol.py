"""The MQTT protocol between a fleet and its devices (DESIGN §6): topics, payloads, parsers.

Everything that crosses the broker is defined here, once:

- ``Topics(prefix)``: the topic of every message, and the two parsers the fleet needs.
- jobs (fleet → device): ``parse_job(payload) -> JobMessage`` on the device, ``build_job(...)``
  on the fleet (a signer then adds ``key_id`` and ``signature``). What is signed is
  ``canonical_json(job minus "signature")``; signatures, expiry and targets are judged by
  ``ota.trust``, not here.
- device → fleet payloads: ``status_payload``, ``state_payload`` (and ``OFFLINE_STATE``, the
  last will), ``telemetry_payload``, ``alert_payload``, ``event_payload`` return compact
  UTF-8 JSON bytes; ``parse_status``, ``parse_state``, ``parse_telemetry``, ``parse_alert``
  and ``parse_event`` read them on the fleet.
- ``load_schema(name)``: the JSON Schema (draft 2020-12) of each payload, in
  ``ota/schemas/<name>.schema.json``. Schemas and parsers carry the same types and ranges;
  the rules a schema cannot say (a size in bytes, ``expires_at`` after ``issued_at``, an
  integer written ``1.0``, a key given twice) are the parsers' alone.

Parsers are strict and total: every payload either parses or raises ``Rejected`` (reason
``too_large`` when over the size limit of its kind, ``unsigned`` for a job without
``signature``/``key_id``, else ``malformed``) whose message names the field, what is wrong
with it and what it must be. No other exception escapes a parser. Builders validate by the
same rules and raise ``ValueError`` for a value no parser would take (a caller bug); free
text (reasons, messages, labels) is cut to its limit instead, and so are the lists of drift
evidence (scores, windows, frame ids: each builder says which it keeps).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from inference.errors import ConfigError
from inference.result import Detection
from ota.errors import REJECT_REASONS, Rejected
from ota.trust import canonical_json  # the one definition of what a signature covers
from ota.update_events import STEPS, JobEvent, JobStatus
from ota.update_machine import Outcome, State

_T = TypeVar("_T")

DEFAULT_PREFIX = "edge/v1"

#: Device ids, group names and job ids: safe in topics (no ``/ + #``) and in file names.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: ``{p}/group/...`` carries group jobs, so no device may be called ``group``.
RESERVED_DEVICE_IDS = frozenset({"group"})
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
#: Standard padded base64 of exactly 64 bytes, in its canonical form (unused bits zero).
SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/]{85}[AQgw]==")
#: http(s), a non-empty authority, then printable ASCII only (RFC 3986: anything else is %-encoded).
URL_RE = re.compile(r'https?://[!-"$-.0->@-~]+(?:[/?#][!-~]*)?')
#: Model names as the model store keeps them.
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
#: Kinds of alerts and events: ``retrain_suggested``, ``detections``, ...
KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
AGENT_VERSION_RE = re.compile(r"[!-~]{1,64}")
#: Drift metrics: a family (``brightness``, ``classes``, ``confidence``, ``rate``, ...), for a
#: per-class one ``:<label>`` (1-128 characters, no control characters; may hold ``:``).
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,63}(?::[^\u0000-\u001f\u007f]{1,128})?")
#: Drift scores: ``psi``, ``js``, ``mean_shift``, ``linf``, and any later one of this form.
SCORE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: A telemetry ``drift`` key: ``<metric>:<score>`` (the score is after the last ``:``).
DRIFT_KEY_RE = re.compile(rf"{METRIC_RE.pattern}:{SCORE_RE.pattern}")

#: The largest integer every JSON implementation reads exactly (2**53 - 1); also the
#: bound of every number in the protocol.
MAX_INT = 2**53 - 1
MAX_URL_CHARS = 2048
MAX_DEVICES = 1000
MAX_REASON_CHARS = 1024
MAX_MESSAGE_CHARS = 1024
MAX_WINDOW_CHARS = 128
MAX_LABEL_CHARS = 128
MAX_DETECTIONS = 256
MAX_DRIFT_SCORES = 64
MAX_WINDOWS = 64
MAX_FRAMES = 256

MAX_JOB_BYTES = 16384
MAX_STATUS_BYTES = 4096
MAX_STATE_BYTES = 4096
MAX_TELEMETRY_BYTES = 16384
MAX_ALERT_BYTES = 32768
MAX_EVENT_BYTES = 65536

#: ``deploy`` | ``rollback`` | ``pin`` change the model; ``sampling`` sets the device's
#: sampling policy (a ``[sampling]`` table as JSON, whose meaning the device checks) and
#: ``capture`` keeps its next ``frames`` frames. A device without sampling rejects those two
#: ``unsupported_action``.
JOB_ACTIONS = ("deploy", "rollback", "pin", "sampling", "capture")
JOB_FIELDS = (
    "job_id",
    "action",
    "target",
    "issued_at",
    "expires_at",
    "nonce",
    "manifest_url",
    "manifest_sha256",
    "release_counter",
    "version",
    "sampling",
    "frames",
    "key_id",
    "signature",
)
JOB_REQUIRED = ("job_id", "action", "target", "issued_at", "expires_at", "nonce")
DEPLOY_ONLY = ("manifest_url", "manifest_sha256", "release_counter")
PIN_ONLY = ("version",)
SAMPLING_ONLY = ("sampling",)
CAPTURE_ONLY = ("frames",)
#: A ``sampling`` policy: its canonical JSON at most this many bytes, nested at most this deep
#: (the object itself is level 1; a [sampling] table needs 4).
MAX_SAMPLING_BYTES = 16384
MAX_SAMPLING_DEPTH = 8
#: ``frames`` of a capture job: 1 to this many.
MAX_CAPTURE_FRAMES = 1000

STATUSES = tuple(s.value for s in JobStatus)
STEP_NAMES = tuple(dict.fromkeys(STEPS.values()))
DETAILS = tuple(o.value for o in Outcome)
PHASES = tuple(s.value for s in State)

OFFLINE_STATE = b'{"online":false}'

SCHEMAS = ("job", "status", "state", "telemetry", "alerts", "events")


def new_nonce() -> str:
    """A fresh random nonce for a job (24 characters of ``[A-Za-z0-9_-]``)."""
    return secrets.token_urlsafe(18)


# ---------------------------------------------------------------------------- identifiers


def _is_id(value: object) -> bool:
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def _is_device(value: object) -> bool:
    return _is_id(value) and value not in RESERVED_DEVICE_IDS


def check_id(value: object, what: str, *, device: bool = True) -> str:
    """``value`` if it is a usable identifier, else ``ConfigError`` naming ``what``.

    Device ids (the default) may not be ``group``: that level carries group jobs. Pass
    ``device=False`` for a job id or a group name."""
    if not _is_id(value):
        raise ConfigError(
            f"{what} {_short(value)} is not a usable id: use 1-64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    assert isinstance(value, str)
    if device and value in RESERVED_DEVICE_IDS:
        raise ConfigError(
            f"{what} {value!r} is reserved (the topic level 'group' carries group jobs): pick another"
        )
    return value


def check_prefix(prefix: object) -> str:
    """``prefix`` if it is usable as the topic prefix, else ``ConfigError``."""
    rule = (
        "use one or more non-empty levels separated by '/', without wildcards (+ #), "
        "a leading '$' or a leading or trailing '/', e.g. 'edge/v1'"
    )
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"MQTT topic prefix {_short(prefix)} is empty or not text: {rule}")
    bad = (
        "+" in prefix
        or "#" in prefix
        or "\0" in prefix
        or prefix.startswith("$")
        or "" in prefix.split("/")
        or len(prefix.encode("utf-8", "surrogatepass")) > 1024
    )
    if bad:
        raise ConfigError(f"MQTT topic prefix {_short(prefix)} is not usable: {rule}")
    return prefix


class Topics:
    """The topics of one prefix (DESIGN §6). Ids are checked (``ConfigError``), so no
    argument can smuggle a wildcard or an extra level into a topic."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)

    def __repr__(self) -> str:
        return f"Topics({self.prefix!r})"

    def device_notify(self, device: str) -> str:
        """fleet → device, QoS 1, not retained: a signed job for one device."""
        return f"{self.prefix}/{check_id(device, 'device id')}/jobs/notify"

    def group_notify(self, group: str) -> str:
        """fleet → every device of a group, QoS 1, not retained: a signed job."""
        return f"{self.prefix}/group/{check_id(group, 'group', device=False)}/jobs/notify"

    def status(self, device: str, job_id: str) -> str:
        """device → fleet, QoS 1, not retained: the job's statuses."""
        device, job_id = check_id(device, "device id"), check_id(job_id, "job id", device=False)
        return f"{self.prefix}/{device}/jobs/{job_id}/status"

    def state(self, device: str) -> str:
        """device → fleet, QoS 1, retained: the device's state; its last will is ``OFFLINE_STATE``."""
        return f"{self.prefix}/{check_id(device, 'device id')}/state"

    def telemetry(self, device: str) -> str:
        """device → fleet, QoS 1, not retained: window summaries."""
        return f"{self.prefix}/{check_id(device, 'device id')}/telemetry"

    def alerts(self, device: str) -> str:
        """device → fleet, QoS 1, not retained: drift and decay alerts."""
        return f"{self.prefix}/{check_id(device, 'device id')}/alerts"

    def events(self, device: str) -> str:
        """device → fleet, QoS 0, not retained: detections (optional, rate-limited)."""
        return f"{self.prefix}/{check_id(device, 'device id')}/events"

    def all_status(self) -> str:
        """The filter for every device's job statuses."""
        return f"{self.prefix}/+/jobs/+/status"

    def all_state(self) -> str:
        """The filter for every device's state."""
        return f"{self.prefix}/+/state"

    def _levels(self, topic: object) -> list[str] | None:
        head = self.prefix + "/"
        if not isinstance(topic, str) or not topic.startswith(head):
            return None
        return topic[len(head) :].split("/")

    def parse_status_topic(self, topic: str) -> tuple[str, str] | None:
        """``(device, job_id)`` of a status topic, or None for any other topic."""
        levels = self._levels(topic)
        if levels is None or len(levels) != 4 or levels[1] != "jobs" or levels[3] != "status":
            return None
        device, job_id = levels[0], levels[2]
        if not _is_device(device) or not _is_id(job_id):
            return None
        return device, job_id

    def parse_state_topic(self, topic: str) -> str | None:
        """The device of a state topic, or None for any other topic."""
        levels = self._levels(topic)
        if levels is None or len(levels) != 2 or levels[1] != "state" or not _is_device(levels[0]):
            return None
        return levels[0]


# ---------------------------------------------------------------------------- field checks


class _Invalid(Exception):
    """One field breaks a rule: ``"<field>: <what is wrong>; <what it must be>"``."""

    def __init__(self, where: str, problem: str, rule: str) -> None:
        super().__init__(f"{where}: {problem}; {rule}")
        self.where, self.problem, self.rule = where, problem, rule

    def inside(self, outer: str) -> _Invalid:
        return _Invalid(f"{outer}.{self.where}", self.problem, self.rule)


def _short(value: object, limit: int = 40) -> str:
    if isinstance(value, str):
        text = repr(value[: limit + 1])
        return text if len(value) <= limit else text[:-1] + "…" + text[-1]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _got(value: object) -> str:
    if value is None:
        return "got null"
    if isinstance(value, bool):
        return f"got {str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"got the integer {_short(value)}"
    if isinstance(value, float):
        return f"got the number {_short(value)}"
    if isinstance(value, str):
        return f"got the string {_short(value)}" if value else "got an empty string"
    if isinstance(value, list):
        return f"got an array of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "got an object"
    return f"got a {type(value).__name__}"


def _key_name(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key) else _short(key)


def _no_unknown(obj: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise _Invalid(
            _key_name(unknown[0]), f"unknown field in {what}", f"{what} has only {', '.join(allowed)}"
        )


def _require(obj: Mapping[str, Any], required: Sequence[str], what: str) -> None:
    for key in required:
        if key not in obj:
            raise _Invalid(key, "missing", f"required in every {what}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(value: object, low: int) -> bool:
    """An int or float (not a bool) from ``low`` to ``MAX_INT``: NaN and infinities are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return low <= value <= MAX_INT


def _uint(obj: Mapping[str, Any], key: str, meaning: str = "") -> int:
    value = obj[key]
    if not _is_int(value) or not _in_range(value, 0):
        extra = " (written without a fraction or exponent)" if isinstance(value, float) else ""
        raise _Invalid(key, _got(value), f"must be an integer from 0 to {MAX_INT}{meaning}{extra}")
    assert isinstance(value, int)
    return value


def _opt_uint(obj: Mapping[str, Any], key: str, meaning: str = "") -> int | None:
    if obj[key] is None:
        return None
    try:
        return _uint(obj, key, meaning)
    except _Invalid as err:
        raise _Invalid(key, err.problem, err.rule + ", or null") from None


def _number(obj: Mapping[str, Any], key: str, meaning: str = "") -> float:
    value = obj[key]
    if not _in_range(value, 0):
        raise _Invalid(key, _got(value), f"must be a number from 0 to {MAX_INT}{meaning}")
    assert isinstance(value, (int, float))
    return float(value)


def _match(value: object, where: str, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise _Invalid(where, _got(value), f"must be {rule}")
    return value


def _id(value: object, where: str) -> str:
    return _match(
        value, where, ID_RE, "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )


def _device_id(value: object, where: str) -> str:
    _id(value, where)
    if value in RESERVED_DEVICE_IDS:
        raise _Invalid(where, f"got the reserved id {value!r}", "must be a device id other than 'group'")
    assert isinstance(value, str)
    return value


def _text(obj: Mapping[str, Any], key: str, limit: int, *, nullable: bool = False) -> str | None:
    value = obj[key]
    if value is None and nullable:
        return None
    null = " or null" if nullable else ""
    if not isinstance(value, str) or len(value) > limit:
        got = _got(value) if not isinstance(value, str) else f"got {len(value)} characters"
        raise _Invalid(key, got, f"must be a string of at most {limit} characters{null}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(key, "got a lone surrogate (\\ud800-\\udfff)", "must be valid Unicode text") from None
    return value


def _choice(obj: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = obj[key]
    if not isinstance(value, str) or value not in choices:
        raise _Invalid(key, _got(value), f"must be one of {', '.join(choices)}")
    return value


def _opt_choice(obj: Mapping[str, Any], key: str, choices: Sequence[str]) -> str | None:
    value = obj[key]
    if value is not None and (not isinstance(value, str) or value not in choices):
        raise _Invalid(key, _got(value), f"must be one of {', '.join(choices)}, or null")
    return value


def _model(obj: Mapping[str, Any]) -> str | None:
    value = obj["model"]
    if value is None:
        return None
    return _match(
        value, "model", MODEL_RE, "a model name (1-100 characters from A-Z a-z 0-9 . _ + -) or null"
    )


# ---------------------------------------------------------------------------- JSON in


class _BadJSON(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON(f"the key {_short(key)} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON(f"the number {_short(text)} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > 100:  # far past MAX_INT; Python's own limit (4300 digits) would name sys settings
        raise _BadJSON(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _load(payload: bytes, kind: str, max_bytes: int) -> dict[str, Any]:
    """The JSON object in ``payload``: size first (``too_large``), then UTF-8 JSON (``malformed``)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise Rejected("malformed", f"{kind}: {_got(payload)}; must be bytes of UTF-8 JSON")
    size = len(payload)
    if size > max_bytes:
        raise Rejected("too_large", f"{kind}: {size} bytes; must be at most {max_bytes} bytes")
    rule = "must be one JSON object in UTF-8 (RFC 8259)"
    try:
        text = bytes(payload).decode("utf-8")
        obj = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int
        )
    except UnicodeDecodeError as err:
        raise Rejected("malformed", f"{kind}: not UTF-8 (byte {err.start}); {rule}") from None
    except RecursionError:
        raise Rejected("malformed", f"{kind}: nested too deeply; {rule}") from None
    except ValueError as err:  # JSONDecodeError or _BadJSON
        raise Rejected("malformed", f"{kind}: {err}; {rule}") from None
    if not isinstance(obj, dict):
        raise Rejected("malformed", f"{kind}: {_got(obj)}; {rule}")
    return obj


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Target(Mapping[str, Any]):
    """Who a job is for: ``devices`` (a tuple) or ``group``. Reads like the JSON too:
    ``target["devices"]``, ``"group" in target``, ``target.get("group")``."""

    devices: tuple[str, ...] = ()
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group} if self.group is not None else {"devices": list(self.devices)}

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return 1

    def includes(self, device: str, group: str | None) -> bool:
        """True when a device with this id and group is one the job names."""
        if self.group is not None:
            return group is not None and group == self.group
        return device in self.devices


@dataclass(frozen=True)
class JobMessage:
    """A job whose every field is well formed. Not yet trusted: ``ota.trust`` checks the
    signature (over ``signed_bytes()``), replay, expiry and target."""

    job_id: str
    action: str
    target: Target
    issued_at: int
    expires_at: int
    nonce: str
    key_id: str
    signature: str
    manifest_url: str | None = None
    manifest_sha256: str | None = None
    release_counter: int | None = None
    version: int | None = None
    #: sampling: the ``[sampling]`` table as JSON (its meaning is checked on the device).
    sampling: dict[str, Any] | None = field(default=None, hash=False)
    #: capture: how many of the next frames to keep.
    frames: int | None = None
    #: The parsed object without "signature": what was signed.
    body: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def devices(self) -> tuple[str, ...]:
        return self.target.devices

    @property
    def group(self) -> str | None:
        return self.target.group

    def signed_bytes(self) -> bytes:
        """``canonical_json(body)``: the bytes the signature covers."""
        return canonical_json(self.body)

    def to_json(self) -> dict[str, Any]:
        """The job as sent: the body plus its signature."""
        return {**self.body, "signature": self.signature}


def _check_target(value: object) -> Target:
    rule = 'must be {"devices": [id, ...]} or {"group": id}'
    if not isinstance(value, dict):
        raise _Invalid("target", _got(value), rule)
    keys = sorted(value)
    if keys == ["group"]:
        return Target(group=_id(value["group"], "target.group"))
    if keys != ["devices"]:
        what = ", ".join(_key_name(k) for k in keys) if keys else "no field"
        raise _Invalid("target", f"has {what}", rule + " (exactly one of the two)")
    devices = value["devices"]
    if not isinstance(devices, list) or not 1 <= len(devices) <= MAX_DEVICES:
        raise _Invalid("target.devices", _got(devices), f"must be an array of 1 to {MAX_DEVICES} device ids")
    seen: set[str] = set()
    for i, device in enumerate(devices):
        where = f"target.devices[{i}]"
        _device_id(device, where)
        if device in seen:
            raise _Invalid(where, f"{device!r} is listed twice", "must name each device once")
        seen.add(device)
    return Target(devices=tuple(devices))


def _depth(value: object) -> int:
    """How deeply arrays and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_SAMPLING_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_sampling(value: object) -> dict[str, Any]:
    """The shape of a ``sampling`` policy: an object, nested at most ``MAX_SAMPLING_DEPTH``
    deep, at most ``MAX_SAMPLING_BYTES`` as canonical JSON. Its keys and values are the
    device's to judge (``monitoring.sampling_policy.parse_policy``)."""
    rule = "must be a [sampling] table as a JSON object"
    if not isinstance(value, dict):
        raise _Invalid("sampling", _got(value), rule)
    depth = _depth(value)
    if depth > MAX_SAMPLING_DEPTH:
        raise _Invalid(
            "sampling", f"nested {depth}+ levels deep", f"{rule}, nested at most {MAX_SAMPLING_DEPTH}"
        )
    try:
        size = len(canonical_json(value))
    except Rejected:  # NaN, a lone surrogate, a non-string key: no JSON at all
        raise _Invalid("sampling", "has no canonical JSON form", f"{rule} of valid Unicode text") from None
    if size > MAX_SAMPLING_BYTES:
        raise _Invalid("sampling", f"{size} bytes as canonical JSON", f"must be at most {MAX_SAMPLING_BYTES}")
    return value


def _check_job(obj: Mapping[str, Any], *, signed: bool) -> dict[str, Any]:
    """The JobMessage fields of ``obj`` (without ``body``), or ``_Invalid``."""
    allowed = JOB_FIELDS if signed else tuple(f for f in JOB_FIELDS if f not in ("key_id", "signature"))
    _no_unknown(obj, allowed, "a job")
    _require(obj, JOB_REQUIRED + (("key_id", "signature") if signed else ()), "job")
    out: dict[str, Any] = {
        "job_id": _id(obj["job_id"], "job_id"),
        "action": _choice(obj, "action", JOB_ACTIONS),
        "target": _check_target(obj["target"]),
        "issued_at": _uint(obj, "issued_at", " (Unix seconds UTC)"),
        "expires_at": _uint(obj, "expires_at", " (Unix seconds UTC)"),
        "nonce": _match(obj["nonce"], "nonce", NONCE_RE, "16-64 characters from A-Z a-z 0-9 _ -"),
    }
    action = out["action"]
    if out["expires_at"] <= out["issued_at"]:
        raise _Invalid(
            "expires_at", f"{out['expires_at']} is not after issued_at {out['issued_at']}", "must be later"
        )
    for key in DEPLOY_ONLY:
        if key in obj and action != "deploy":
            raise _Invalid(key, f"given with action {action!r}", "only a deploy job carries it")
    for only, owner in ((PIN_ONLY, "pin"), (SAMPLING_ONLY, "sampling"), (CAPTURE_ONLY, "capture")):
        for key in only:
            if key in obj and action != owner:
                raise _Invalid(key, f"given with action {action!r}", f"only a {owner} job carries it")
    if action == "deploy":
        _require(obj, ("manifest_url", "manifest_sha256"), "deploy job")
        url = obj["manifest_url"]
        if isinstance(url, str) and len(url) > MAX_URL_CHARS:
            raise _Invalid("manifest_url", f"got {len(url)} characters", f"must be at most {MAX_URL_CHARS}")
        out["manifest_url"] = _match(
            url,
            "manifest_url",
            URL_RE,
            f"an http:// or https:// URL in printable ASCII, at most {MAX_URL_CHARS}",
        )
        out["manifest_sha256"] = _match(
            obj["manifest_sha256"],
            "manifest_sha256",
            SHA256_RE,
            "64 lowercase hex digits (sha256 of manifest.json)",
        )
        if "release_counter" in obj:
            out["release_counter"] = _uint(obj, "release_counter", " (the manifest's release counter)")
    if action == "pin" and "version" in obj:
        out["version"] = _uint(obj, "version", " (a version in the store)")
    if action == "sampling":
        _require(obj, SAMPLING_ONLY, "sampling job")
        out["sampling"] = _check_sampling(obj["sampling"])
    if action == "capture":
        _require(obj, CAPTURE_ONLY, "capture job")
        frames = obj["frames"]
        if not _is_int(frames) or not 1 <= frames <= MAX_CAPTURE_FRAMES:
            extra = " (written without a fraction or exponent)" if isinstance(frames, float) else ""
            raise _Invalid(
                "frames", _got(frames), f"must be an integer from 1 to {MAX_CAPTURE_FRAMES}{extra}"
            )
        out["frames"] = frames
    if signed:
        out["key_id"] = _match(
            obj["key_id"],
            "key_id",
            KEY_ID_RE,
            "16 lowercase hex digits (sha256 of the raw ed25519 public key)",
        )
        out["signature"] = _match(
            obj["signature"],
            "signature",
            SIGNATURE_RE,
            "standard padded base64 of a 64-byte ed25519 signature",
        )
    return out


def parse_job(payload: bytes) -> JobMessage:
    """A well-formed job, or ``Rejected``: ``too_large``, ``malformed`` or ``unsigned``.

    The signature is not checked here: ``JobMessage.body`` and ``signed_bytes()`` are what it
    must cover."""
    obj = _load(payload, "job", MAX_JOB_BYTES)
    for key in ("signature", "key_id"):
        if obj.get(key) in (None, ""):
            raise Rejected(
                "unsigned", f"{key}: missing; every job must be signed by a fleet key the device trusts"
            )
    try:
        fields = _check_job(obj, signed=True)
    except _Invalid as err:
        raise Rejected("malformed", str(err)) from None
    body = {k: v for k, v in obj.items() if k != "signature"}
    return JobMessage(**fields, body=body)


def _plain(value: Any) -> Any:
    """A mapping (a TOML table, say) as plain JSON types: dicts, lists and scalars."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


#: What ``key_id`` and ``signature`` add to a job's canonical JSON.
SIGNATURE_OVERHEAD = len(canonical_json({"key_id": "0" * 16, "signature": "A" * 88})) - len(b"{}") + len(b",")


def build_job(
    *,
    job_id: str,
    action: str,
    issued_at: int,
    expires_at: int,
    nonce: str,
    devices: Sequence[str] | None = None,
    group: str | None = None,
    manifest_url: str | None = None,
    manifest_sha256: str | None = None,
    release_counter: int | None = None,
    version: int | None = None,
    sampling: Mapping[str, Any] | None = None,
    frames: int | None = None,
) -> dict[str, Any]:
    """An unsigned job (no ``key_id``/``signature``) by the rules of ``parse_job``; else
    ``ConfigError`` naming the field. A signer adds ``key_id``, then ``signature`` over
    ``canonical_json`` of the result."""
    if (devices is None) == (group is None):
        raise ConfigError("target: give exactly one of devices or group")
    job: dict[str, Any] = {
        "job_id": job_id,
        "action": action,
        "target": {"devices": list(devices)} if devices is not None else {"group": group},
        "issued_at": issued_at,
        "expires_at": expires_at,
        "nonce": nonce,
    }
    optional = {
        "manifest_url": manifest_url,
        "manifest_sha256": manifest_sha256,
        "release_counter": release_counter,
        "version": version,
        "sampling": None if sampling is None else _plain(sampling),
        "frames": frames,
    }
    job.update({k: v for k, v in optional.items() if v is not None})
    try:
        _check_job(job, signed=False)
    except _Invalid as err:
        raise ConfigError(str(err)) from None
    size = len(canonical_json(job)) + SIGNATURE_OVERHEAD
    if size > MAX_JOB_BYTES:
        raise ConfigError(
            f"job: {size} bytes once signed; must be at most {MAX_JOB_BYTES} bytes (target a group, "
            "or send the job to fewer devices at a time)"
        )
    return job


# ---------------------------------------------------------------------------- device → fleet


def _clean(text: str, limit: int, max_bytes: int | None = None) -> str:
    """``text`` as valid Unicode, cut to ``limit`` characters (and its JSON string to ``max_bytes``)."""
    if not isinstance(text, str):
        raise ValueError(f"{_got(text)}; must be a string")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    while max_bytes is not None and len(json.dumps(text, ensure_ascii=False).encode("utf-8")) > max_bytes:
        text = text[: len(text) * 3 // 4] + "…"
    return text


def _as_number(value: object, what: str) -> int | float:
    """numpy scalars and other Real numbers as plain int/float (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what}: {_got(value)}; must be a number")
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what}: {_got(value)}; must be an integer")
    return int(value)


def _opt_int(value: object, what: str) -> int | None:
    return None if value is None else _as_int(value, what)


def _built(
    kind: str, obj: dict[str, Any], check: Callable[[Mapping[str, Any]], object], max_bytes: int | None
) -> bytes:
    try:
        check(obj)
    except _Invalid as err:
        raise ValueError(f"{kind} payload: {err}") from None
    data = _dump(obj)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{kind} payload: {len(data)} bytes; must be at most {max_bytes} bytes")
    return data


def _parsed(kind: str, payload: bytes, check: Callable[[Mapping[str, Any]], _T], max_bytes: int) -> _T:
    obj = _load(payload, kind, max_bytes)
    try:
        return check(obj)
    except _Invalid as err:
        raise Rejected("malformed", str(err)) from None


# --- status

STATUS_FIELDS = ("job_id", "status", "step", "detail", "reason", "model", "version", "ts", "seq")


@dataclass(frozen=True)
class StatusMessage:
    """One job status from a device (DESIGN §6)."""

    job_id: str
    status: JobStatus
    step: str | None
    detail: str | None
    reason: str | None
    model: str | None
    version: int | None
    ts: float
    seq: int

    @property
    def reject_reason(self) -> str | None:
        """The reason code of a REJECTED status (one of ``REJECT_REASONS``), else None."""
        if self.status is not JobStatus.REJECTED or self.reason is None:
            return None
        return self.reason.split(": ", 1)[0]


def _check_status(obj: Mapping[str, Any]) -> StatusMessage:
    _no_unknown(obj, STATUS_FIELDS, "a status")
    _require(obj, STATUS_FIELDS, "status")
    status = JobStatus(_choice(obj, "status", STATUSES))
    step = _opt_choice(obj, "step", STEP_NAMES)
    detail = _opt_choice(obj, "detail", DETAILS)
    reason = _text(obj, "reason", MAX_REASON_CHARS, nullable=True)
    if status is JobStatus.IN_PROGRESS and step is None:
        raise _Invalid("step", "got null with status IN_PROGRESS", f"must be one of {', '.join(STEP_NAMES)}")
    if status is not JobStatus.IN_PROGRESS and step is not None:
        raise _Invalid("step", f"got {step!r} with status {status.value}", "must be null unless IN_PROGRESS")
    if status is not JobStatus.FAILED and detail is not None:
        raise _Invalid("detail", f"got {detail!r} with status {status.value}", "must be null unless FAILED")
    if status is JobStatus.REJECTED and (reason is None or reason.split(": ", 1)[0] not in REJECT_REASONS):
        raise _Invalid(
            "reason",
            _got(reason) + " with status REJECTED",
            f"must be '<code>: <message>' with a code from {', '.join(REJECT_REASONS)}",
        )
    return StatusMessage(
        job_id=_id(obj["job_id"], "job_id"),
        status=status,
        step=step,
        detail=detail,
        reason=reason,
        model=_model(obj),
        version=_opt_uint(obj, "version"),
        ts=_number(obj, "ts", " (Unix seconds)"),
        seq=_uint(obj, "seq", " (the device's outbox sequence number)"),
    )


def status_payload(
    *,
    job_id: str,
    status: JobStatus | str,
    ts: float,
    seq: int,
    step: str | None = None,
    detail: str | None = None,
    reason: str | None = None,
    model: str | None = None,
    version: int | None = None,
) -> bytes:
    """A job status. A REJECTED status's ``reason`` is ``"<code>: <message>"`` (a code from
    ``REJECT_REASONS``); a reason past 1024 characters is cut."""
    obj = {
        "job_id": job_id,
        "status": JobStatus(status).value,
        "step": step,
        "detail": detail,
        "reason": None if reason is None else _clean(reason, MAX_REASON_CHARS, MAX_STATUS_BYTES // 2),
        "model": model,
        "version": _opt_int(version, "version"),
        "ts": round(_as_number(ts, "ts"), 3),
        "seq": _as_int(seq, "seq"),
    }
    return _built("status", obj, _check_status, MAX_STATUS_BYTES)


def status_from_event(event: JobEvent, *, seq: int) -> bytes:
    """The status payload of an ``UpdateEvents`` event."""
    return status_payload(
        job_id=event.job_id,
        status=event.status,
        step=event.step,
        detail=event.detail,
        reason=event.reason,
        model=event.model,
        version=event.version,
        ts=event.ts,
        seq=seq,
    )


def parse_status(payload: bytes) -> StatusMessage:
    """A job status, or ``Rejected`` (``too_large`` or ``malformed``) naming the field."""
    return _parsed("status", payload, _check_status, MAX_STATUS_BYTES)


# --- state

STATE_FIELDS = (
    "online",
    "device",
    "group",
    "model",
    "version",
    "sha256",
    "phase",
    "fps",
    "uptime_s",
    "agent_version",
    "hold",
    "window",
    "ts",
)


@dataclass(frozen=True)
class StateMessage:
    """A device's retained state; ``online=False`` (the last will) carries nothing else."""

    online: bool
    device: str | None = None
    group: str | None = None
    model: str | None = None
    version: int | None = None
    sha256: str | None = None
    phase: str | None = None
    fps: float | None = None
    uptime_s: float | None = None
    agent_version: str | None = None
    hold: bool | None = None
    window: str | None = None
    ts: float | None = None


def _check_state(obj: Mapping[str, Any]) -> StateMessage:
    if "online" not in obj:
        raise _Invalid("online", "missing", "required in every state (true, or false alone)")
    online = obj["online"]
    if online is False:
        _no_unknown(obj, ("online",), "an offline state")
        return StateMessage(online=False)
    if online is not True:
        raise _Invalid("online", _got(online), "must be true or false")
    _no_unknown(obj, STATE_FIELDS, "a state")
    _require(obj, STATE_FIELDS, "online state")
    group = obj["group"]
    sha256 = obj["sha256"]
    hold = obj["hold"]
    if not isinstance(hold, bool):
        raise _Invalid("hold", _got(hold), "must be true or false")
    return StateMessage(
        online=True,
        device=_device_id(obj["device"], "device"),
        group=None if group is None else _id(group, "group"),
        model=_model(obj),
        version=_opt_uint(obj, "version"),
        sha256=None
        if sha256 is None
        else _match(sha256, "sha256", SHA256_RE, "64 lowercase hex digits or null"),
        phase=_choice(obj, "phase", PHASES),
        fps=_number(obj, "fps"),
        uptime_s=_number(obj, "uptime_s", " (seconds)"),
        agent_version=_match(obj["agent_version"], "agent_version", AGENT_VERSION_RE, "1-64 printable ASCII"),
        hold=hold,
        window=_text(obj, "window", MAX_WINDOW_CHARS, nullable=True),
        ts=_number(obj, "ts", " (Unix seconds)"),
    )


def state_payload(
    *,
    device: str,
    phase: State | str,
    fps: float,
    uptime_s: float,
    agent_version: str,
    ts: float,
    group: str | None = None,
    model: str | None = None,
    version: int | None = None,
    sha256: str | None = None,
    hold: bool = False,
    window: str | None = None,
) -> bytes:
    """The retained online state (the last will and a graceful stop publish ``OFFLINE_STATE``)."""
    obj = {
        "online": True,
        "device": device,
        "group": group,
        "model": model,
        "version": _opt_int(version, "version"),
        "sha256": sha256,
        "phase": State(phase).value,
        "fps": _as_number(fps, "fps"),
        "uptime_s": _as_number(uptime_s, "uptime_s"),
        "agent_version": agent_version,
        "hold": hold,
        "window": None if window is None else _clean(window, MAX_WINDOW_CHARS),
        "ts": round(_as_number(ts, "ts"), 3),
    }
    return _built("state", obj, _check_state, MAX_STATE_BYTES)


def parse_state(payload: bytes) -> StateMessage:
    """A device state (online, or the offline last will), or ``Rejected`` naming the field."""
    return _parsed("state", payload, _check_state, MAX_STATE_BYTES)


# --- telemetry and alerts: drift fields


def _unicode(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(
            where, "got a lone surrogate (\\ud800-\\udfff)", "must be valid Unicode text"
        ) from None
    return value


_METRIC_RULE = (
    "a drift metric: 1-64 characters from a-z 0-9 _ starting with a letter, then for one class "
    "':' and its label (1-128 characters, no control characters)"
)
_SCORE_RULE = "a drift score: 1-32 characters from a-z 0-9 _, starting with a letter"


def _metric(value: object, where: str) -> str:
    return _unicode(_match(value, where, METRIC_RE, _METRIC_RULE), where)


def _finite_number(obj: Mapping[str, Any], key: str) -> float:
    value = obj[key]
    if not _finite(value):
        raise _Invalid(key, _got(value), f"must be a number from -{MAX_INT} to {MAX_INT}")
    assert isinstance(value, (int, float))
    return float(value)


def _uint_at(value: object, where: str) -> int:
    try:
        return _uint({where: value}, where)
    except _Invalid as err:
        raise _Invalid(where, err.problem, err.rule) from None


def _array(
    obj: Mapping[str, Any], key: str, limit: int, what: str, item: Callable[[object, str], object]
) -> list[Any]:
    """``obj[key]``: an array of at most ``limit`` distinct items, each passing ``item``."""
    value = obj[key]
    if not isinstance(value, list) or len(value) > limit:
        raise _Invalid(key, _got(value), f"must be an array of at most {limit} {what}, each once")
    seen: set[object] = set()
    for i, v in enumerate(value):
        item(v, f"{key}[{i}]")
        if v in seen:
            raise _Invalid(
                f"{key}[{i}]", f"{_short(v)} is listed twice", f"must list each of the {what} once"
            )
        seen.add(v)
    return value


WINDOW_FIELDS = ("index", "start_ts", "end_ts", "samples")


def _check_window(obj: Mapping[str, Any]) -> None:
    value = obj["window"]
    if not isinstance(value, dict):
        raise _Invalid("window", _got(value), 'must be {"index", "start_ts", "end_ts", "samples"}')
    try:
        _no_unknown(value, WINDOW_FIELDS, "a window")
        _require(value, WINDOW_FIELDS, "window")
        _uint(value, "index", " (the window's number)")
        _number(value, "start_ts", " (Unix seconds)")
        _number(value, "end_ts", " (Unix seconds)")
        _uint(value, "samples", " (frames sampled for drift)")
    except _Invalid as err:
        raise err.inside("window") from None


#: The frame collection's counters a telemetry message may carry (all optional, whole numbers):
#: frames kept and found duplicate since the start; spool pending items, bytes and parked items
#: now; frames dropped over the quota, refused and quarantined (kept across restarts); uploaded.
SPOOL_FIELDS = (
    "kept",
    "duplicates",
    "pending",
    "bytes",
    "parked",
    "dropped",
    "refused",
    "quarantined",
    "uploaded",
)


def _check_spool(obj: Mapping[str, Any]) -> None:
    value = obj["spool"]
    if not isinstance(value, dict):
        raise _Invalid("spool", _got(value), "must be an object of the frame collection's counters")
    try:
        _no_unknown(value, SPOOL_FIELDS, "the spool counters")
        for key in value:
            _uint(value, key)
    except _Invalid as err:
        raise err.inside("spool") from None


def _check_drift(obj: Mapping[str, Any]) -> None:
    value = obj["drift"]
    rule = f'must be an object of at most {MAX_DRIFT_SCORES} "<metric>:<score>": [value, threshold]'
    if not isinstance(value, dict) or len(value) > MAX_DRIFT_SCORES:
        got = f"got {len(value)} scores" if isinstance(value, dict) else _got(value)
        raise _Invalid("drift", got, rule)
    for key, pair in value.items():
        where = f"drift[{_short(key)}]"
        if DRIFT_KEY_RE.fullmatch(key) is None:
            raise _Invalid(
                where, "the key is not <metric>:<score>", f"must be {_METRIC_RULE}, ':' and {_SCORE_RULE}"
            )
        _unicode(key, where)
        if not isinstance(pair, list) or len(pair) != 2 or not all(_finite(v) for v in pair):
            raise _Invalid(
                where, _got(pair), f"must be [value, threshold]: two numbers from -{MAX_INT} to {MAX_INT}"
            )


def _wire_number(value: object, what: str) -> float | None:
    """A score or threshold for the wire: 6 significant digits, an infinity as ±MAX_INT (past
    any threshold), None for NaN (a score that could not be computed)."""
    number = float(_as_number(value, what))
    if math.isnan(number):
        return None
    if math.isfinite(number):
        number = float(f"{number:.6g}")
    return max(-float(MAX_INT), min(float(MAX_INT), number))


def _wire_metric(metric: object) -> str:
    """A drift metric for the wire: a per-class label is cut to 128 characters and its control
    characters replaced; a bad family name is a caller's bug (``ValueError``)."""
    if not isinstance(metric, str):
        raise ValueError(f"drift metric: {_got(metric)}; must be a string")
    family, sep, label = metric.partition(":")
    if sep:
        label = re.sub(r"[\u0000-\u001f\u007f]", "\ufffd", _clean(label, MAX_LABEL_CHARS)) or "\ufffd"
    return family + sep + label


def _drift_json(drift: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """The scores nearest or past their thresholds first (value ÷ threshold), at most 64;
    scores that are NaN are left out."""
    entries: list[tuple[float, str, list[float]]] = []
    for key, pair in drift.items():
        metric, sep, score = str(key).rpartition(":")
        if not sep or len(pair) != 2:
            raise ValueError(f"drift {key!r}: must be '<metric>:<score>': [value, threshold]")
        value, threshold = (_wire_number(v, f"drift {key!r}") for v in pair)
        if value is None or threshold is None:
            continue
        ratio = value / threshold if threshold > 0 else (math.inf if value > 0 else 0.0)
        entries.append((ratio, f"{_wire_metric(metric)}:{score}", [value, threshold]))
    entries.sort(key=lambda e: -e[0])
    return {key: pair for _, key, pair in entries[:MAX_DRIFT_SCORES]}


# --- telemetry

TELEMETRY_REQUIRED = (
    "ts",
    "period_s",
    "frames",
    "fps",
    "latency_p50_ms",
    "latency_p95_ms",
    "dropped",
    "errors",
    "model",
    "version",
)
TELEMETRY_OPTIONAL = ("window", "confidence", "drift", "drifted", "reference", "spool")
TELEMETRY_FIELDS = TELEMETRY_REQUIRED + TELEMETRY_OPTIONAL
#: Where a window's statistics came from: the bundle's profile, one learned on the device, or
#: none yet (learning: no drift scores).
REFERENCES = ("bundle", "learned", "learning")


def _check_telemetry(obj: Mapping[str, Any]) -> dict[str, Any]:
    _no_unknown(obj, TELEMETRY_FIELDS, "a telemetry message")
    _require(obj, TELEMETRY_REQUIRED, "telemetry message")
    for key in ("ts", "period_s", "fps", "latency_p50_ms", "latency_p95_ms"):
        _number(obj, key)
    for key in ("frames", "dropped", "errors"):
        _uint(obj, key)
    _model(obj)
    _opt_uint(obj, "version")
    if "window" in obj:
        _check_window(obj)
    if "confidence" in obj:
        _finite_number(obj, "confidence")
    if "drift" in obj:
        _check_drift(obj)
    if "drifted" in obj:
        _array(obj, "drifted", MAX_DRIFT_SCORES, "drift metrics", _metric)
    if "reference" in obj:
        _choice(obj, "reference", REFERENCES)
    if "spool" in obj:
        _check_spool(obj)
    return dict(obj)


def telemetry_payload(
    *,
    ts: float,
    period_s: float,
    frames: int,
    fps: float,
    latency_p50_ms: float,
    latency_p95_ms: float,
    dropped: int,
    errors: int,
    model: str | None = None,
    version: int | None = None,
    window: Mapping[str, Any] | None = None,
    confidence: float | None = None,
    drift: Mapping[str, Sequence[float]] | None = None,
    drifted: Iterable[str] | None = None,
    reference: str | None = None,
    spool: Mapping[str, int] | None = None,
) -> bytes:
    """One window summary (``spool``: the frame collection's counters, ``SPOOL_FIELDS``). The
    drift fields are left out when None: ``window`` (``index``,
    ``start_ts``, ``end_ts``, ``samples``), ``confidence`` (also when not finite), ``drift``
    (``{"<metric>:<score>": [value, threshold]}``, 6 significant digits: at most 64, those
    nearest or past their thresholds first; a NaN score is left out, an infinite one sent as
    ±2**53-1), ``drifted`` (the metrics over their thresholds, at most 64) and ``reference``.
    A per-class metric's label is cut to 128 characters; past 16 KiB the scores furthest below
    their thresholds are left out."""
    obj: dict[str, Any] = {
        "ts": round(_as_number(ts, "ts"), 3),
        "period_s": _as_number(period_s, "period_s"),
        "frames": _as_int(frames, "frames"),
        "fps": _as_number(fps, "fps"),
        "latency_p50_ms": _as_number(latency_p50_ms, "latency_p50_ms"),
        "latency_p95_ms": _as_number(latency_p95_ms, "latency_p95_ms"),
        "dropped": _as_int(dropped, "dropped"),
        "errors": _as_int(errors, "errors"),
        "model": model,
        "version": _opt_int(version, "version"),
    }
    if window is not None:
        try:
            obj["window"] = {
                "index": _as_int(window["index"], "window.index"),
                "start_ts": round(_as_number(window["start_ts"], "window.start_ts"), 3),
                "end_ts": round(_as_number(window["end_ts"], "window.end_ts"), 3),
                "samples": _as_int(window["samples"], "window.samples"),
            }
        except KeyError as err:
            raise ValueError(f"window: {err} missing; must have {', '.join(WINDOW_FIELDS)}") from None
    if confidence is not None and math.isfinite(conf := _as_number(confidence, "confidence")):
        obj["confidence"] = conf
    if drift is not None:
        obj["drift"] = _drift_json(drift)
    if drifted is not None:
        obj["drifted"] = list(dict.fromkeys(_wire_metric(m) for m in drifted))[:MAX_DRIFT_SCORES]
    if reference is not None:
        obj["reference"] = reference
    if spool is not None:
        obj["spool"] = {k: _as_int(v, f"spool.{k}") for k, v in spool.items()}
    _built("telemetry", obj, _check_telemetry, None)  # every field well formed, then the size
    while len(_dump(obj)) > MAX_TELEMETRY_BYTES and (obj.get("drift") or obj.get("drifted")):
        if obj.get("drift"):  # the scores furthest below their thresholds go first
            kept = list(obj["drift"].items())
            obj["drift"] = dict(kept[: len(kept) * 3 // 4])
        else:
            obj["drifted"] = obj["drifted"][: len(obj["drifted"]) * 3 // 4]
    return _built("telemetry", obj, _check_telemetry, MAX_TELEMETRY_BYTES)


def parse_telemetry(payload: bytes) -> dict[str, Any]:
    """A telemetry message as a dict whose every field is checked, or ``Rejected``."""
    return _parsed("telemetry", payload, _check_telemetry, MAX_TELEMETRY_BYTES)


# --- alerts

ALERT_REQUIRED = ("ts", "kind", "message", "model", "version")
ALERT_OPTIONAL = (
    "metric",
    "score",
    "value",
    "threshold",
    "state",
    "windows",
    "start_ts",
    "end_ts",
    "frames",
    "reference",
)
ALERT_FIELDS = ALERT_REQUIRED + ALERT_OPTIONAL
ALERT_STATES = ("raised", "cleared")


def _check_alert(obj: Mapping[str, Any]) -> dict[str, Any]:
    _no_unknown(obj, ALERT_FIELDS, "an alert")
    _require(obj, ALERT_REQUIRED, "alert")
    _number(obj, "ts", " (Unix seconds)")
    _match(obj["kind"], "kind", KIND_RE, "1-64 characters from a-z 0-9 _, starting with a letter")
    _text(obj, "message", MAX_MESSAGE_CHARS)
    _model(obj)
    _opt_uint(obj, "version")
    if "metric" in obj:
        _metric(obj["metric"], "metric")
    if "score" in obj:
        _match(obj["score"], "score", SCORE_RE, _SCORE_RULE)
    for key in ("value", "threshold"):
        if key in obj:
            _finite_number(obj, key)
    if "state" in obj:
        _choice(obj, "state", ALERT_STATES)
    if "windows" in obj:
        _array(obj, "windows", MAX_WINDOWS, f"window numbers (integers from 0 to {MAX_INT})", _uint_at)
    for key in ("start_ts", "end_ts"):
        if key in obj:
            _number(obj, key, " (Unix seconds)")
    if "frames" in obj:
        _array(obj, "frames", MAX_FRAMES, "frame ids (1-64 characters from A-Z a-z 0-9 . _ -)", _id)
    if "reference" in obj:
        _choice(obj, "reference", REFERENCES)
    if "spool" in obj:
        _check_spool(obj)
    return dict(obj)


def alert_payload(
    *,
    ts: float,
    kind: str,
    message: str,
    model: str | None = None,
    version: int | None = None,
    metric: str | None = None,
    score: str | None = None,
    value: float | None = None,
    threshold: float | None = None,
    state: str | None = None,
    windows: Iterable[int] | None = None,
    start_ts: float | None = None,
    end_ts: float | None = None,
    frames: Iterable[str] | None = None,
    reference: str | None = None,
) -> bytes:
    """A drift or decay alert (``kind`` e.g. ``retrain_suggested``); ``message`` is cut at 1024.
    The evidence is left out when None: ``metric``, ``score``, ``value`` and ``threshold``
    (6 significant digits; left out when NaN, an infinity sent as ±2**53-1), ``state``
    (raised | cleared), ``windows`` (the last 64 window numbers), ``start_ts``, ``end_ts``,
    ``frames`` (ids of frames collected in those windows, the latest 256) and ``reference``."""
    obj: dict[str, Any] = {
        "ts": round(_as_number(ts, "ts"), 3),
        "kind": kind,
        "message": _clean(message, MAX_MESSAGE_CHARS, MAX_ALERT_BYTES // 2),
        "model": model,
        "version": _opt_int(version, "version"),
    }
    wire_value = None if value is None else _wire_number(value, "value")
    wire_threshold = None if threshold is None else _wire_number(threshold, "threshold")
    optional: dict[str, Any] = {
        "metric": None if metric is None else _wire_metric(metric),
        "score": score,
        "value": wire_value,
        "threshold": wire_threshold,
        "state": state,
        "windows": None
        if windows is None
        else list(dict.fromkeys(_as_int(w, "windows") for w in windows))[-MAX_WINDOWS:],
        "start_ts": None if start_ts is None else round(_as_number(start_ts, "start_ts"), 3),
        "end_ts": None if end_ts is None else round(_as_number(end_ts, "end_ts"), 3),
        "frames": None if frames is None else list(dict.fromkeys(frames))[-MAX_FRAMES:],
        "reference": reference,
    }
    obj.update({k: v for k, v in optional.items() if v is not None})
    return _built("alert", obj, _check_alert, MAX_ALERT_BYTES)  # 256 frame ids and all else fit


def parse_alert(payload: bytes) -> dict[str, Any]:
    """An alert as a dict whose every field is checked, or ``Rejected``."""
    return _parsed("alert", payload, _check_alert, MAX_ALERT_BYTES)


# --- events

EVENT_FIELDS = ("ts", "frame", "model", "version", "kind", "detections")
DETECTION_FIELDS = ("label", "score", "box")


def _finite(value: object) -> bool:
    return _in_range(value, -MAX_INT)


def _check_event(obj: Mapping[str, Any]) -> dict[str, Any]:
    _no_unknown(obj, EVENT_FIELDS, "an event")
    _require(obj, EVENT_FIELDS, "event")
    _number(obj, "ts", " (Unix seconds)")
    _uint(obj, "frame", " (the frame's index)")
    _model(obj)
    _opt_uint(obj, "version")
    _match(obj["kind"], "kind", KIND_RE, "1-64 characters from a-z 0-9 _, starting with a letter")
    detections = obj["detections"]
    if not isinstance(detections, list) or len(detections) > MAX_DETECTIONS:
        raise _Invalid(
            "detections", _got(detections), f"must be an array of at most {MAX_DETECTIONS} detections"
        )
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        if not isinstance(det, dict):
            raise _Invalid(where, _got(det), 'must be {"label", "score", "box"}')
        try:
            _check_detection(det)
        except _Invalid as err:
            raise err.inside(where) from None
    return dict(obj)


def _check_detection(det: Mapping[str, Any]) -> None:
    _no_unknown(det, DETECTION_FIELDS, "a detection")
    _require(det, DETECTION_FIELDS, "detection")
    _text(det, "label", MAX_LABEL_CHARS)
    if not _finite(det["score"]):
        raise _Invalid("score", _got(det["score"]), f"must be a number from -{MAX_INT} to {MAX_INT}")
    box = det["box"]
    if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
        raise _Invalid(
            "box", _got(box), f"must be [x0, y0, x1, y1]: four numbers from -{MAX_INT} to {MAX_INT}"
        )


def _detection_json(det: Detection | Mapping[str, Any]) -> dict[str, Any] | None:
    """A detection as JSON, or None when a score or coordinate is not finite."""
    if isinstance(det, Detection):
        label, score, box = det.label, det.score, det.box
    else:
        try:
            label, score, box = det["label"], det["score"], det["box"]
        except KeyError as err:
            raise ValueError(f"detection: {err} missing; must have label, score and box") from None
    score_n = _as_number(score, "detection score")
    box_n = [_as_number(v, "detection box") for v in box]
    if not all(math.isfinite(v) for v in (score_n, *box_n)):
        return None
    return {"label": _clean(str(label), MAX_LABEL_CHARS), "score": score_n, "box": box_n}


def event_payload(
    *,
    ts: float,
    frame: int,
    kind: str,
    detections: Iterable[Detection | Mapping[str, Any]],
    model: str | None = None,
    version: int | None = None,
) -> bytes:
    """An event with its detections: at most 256, the highest scores, and as many as fit in
    64 KiB; a detection with a non-finite score or coordinate is left out."""
    dets = [d for d in (_detection_json(det) for det in detections) if d is not None]
    dets.sort(key=lambda d: -d["score"])
    dets = dets[:MAX_DETECTIONS]
    obj = {
        "ts": round(_as_number(ts, "ts"), 3),
        "frame": _as_int(frame, "frame"),
        "model": model,
        "version": _opt_int(version, "version"),
        "kind": kind,
        "detections": dets,
    }
    while len(_dump(obj)) > MAX_EVENT_BYTES and dets:
        dets = dets[: len(dets) * 3 // 4]
        obj["detections"] = dets
    return _built("event", obj, _check_event, MAX_EVENT_BYTES)


def parse_event(payload: bytes) -> dict[str, Any]:
    """An event as a dict whose every field is checked, or ``Rejected``."""
    return _parsed("event", payload, _check_event, MAX_EVENT_BYTES)


# ---------------------------------------------------------------------------- schemas


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one payload: job, status, state, telemetry, alerts, events."""
    if name not in SCHEMAS:
        raise ValueError(f"no schema {name!r}: one of {', '.join(SCHEMAS)}")
    text = (resources.files("ota") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = [
    "ALERT_STATES",
    "DEFAULT_PREFIX",
    "DETAILS",
    "ID_RE",
    "JOB_ACTIONS",
    "JOB_FIELDS",
    "MAX_ALERT_BYTES",
    "MAX_CAPTURE_FRAMES",
    "MAX_EVENT_BYTES",
    "MAX_JOB_BYTES",
    "MAX_SAMPLING_BYTES",
    "MAX_SAMPLING_DEPTH",
    "MAX_STATE_BYTES",
    "MAX_STATUS_BYTES",
    "MAX_TELEMETRY_BYTES",
    "OFFLINE_STATE",
    "PHASES",
    "REFERENCES",
    "SCHEMAS",
    "STATUSES",
    "STEP_NAMES",
    "JobMessage",
    "StateMessage",
    "StatusMessage",
    "Target",
    "Topics",
    "alert_payload",
    "build_job",
    "canonical_json",
    "check_id",
    "check_prefix",
    "event_payload",
    "load_schema",
    "new_nonce",
    "parse_alert",
    "parse_event",
    "parse_job",
    "parse_state",
    "parse_status",
    "parse_telemetry",
    "state_payload",
    "status_from_event",
    "status_payload",
]

"""The agent's configuration: one frozen ``Config``, loaded from TOML, overridden by flags.

Keys mirror the ``edge-agent run`` flags (``max_frames`` for ``--max-frames``). Unknown keys
and wrong types are ``ConfigError`` naming the key, the file and what is accepted, so a typo
never silently falls back to a default. Relative paths in a file are relative to the file's
folder. A ``[probation]`` table holds the probation defaults used by hot swaps.

Parsing is strict and the one place values are checked: whatever ``run`` would reject for a
value, the parser rejects, so ``edge-agent config check`` and ``edge-agent run`` agree (same
message, exit code 2). Integers must be TOML integers (``threads = 4``, not ``"4"``); numbers
must be finite; ``control`` is checked against the full address grammar
(``parse_control_address``) here, not when the control API starts.

Example::

    model = "blazeface"            # zoo name, bundle folder, or a bare .onnx / .tflite
    source = "/dev/video0"
    results = "/var/lib/edge-agent/results.jsonl"
    threads = 2
    log_level = "info"
    providers = ["cpu"]            # in order: ["tensorrt", "cuda", "cpu"]; with options: docs/deploy.md

    [probation]
    frames = 300
    seconds = 60

    [mqtt]                         # the fleet channel (docs/protocol.md)
    url = "mqtts://broker.example:8883"
    device_id = "cam-17"           # default: the host name
    group = "store-42"
    ca = "/etc/edge-agent/ca.pem"
    cert = "/etc/edge-agent/device.pem"
    key = "/etc/edge-agent/device.key"

    [monitoring]                   # drift and decay (docs/monitoring.md)
    window = "60"                  # samples (1 a second by default), or a time: "5m"
    metrics = "127.0.0.1:9464"     # Prometheus /metrics; off when not set

    [sampling]                     # frames worth labelling (docs/collection.md)
    dedup_bits = 6
    dedup_window = "10m"
    [[sampling.strategies]]
    name = "unsure"
    kind = "uncertain"
    low = 0.3
    high = 0.6
    per_minute = 10

    [spool]
    max_bytes = "500MB"
    max_items = 20000

    [upload]
    url = "s3://bucket/prefix"     # or https://host/path/{device}/{sha256}.jpg
    region = "eu-west-1"
    credentials_file = "/etc/edge-agent/s3-credentials.json"
    schedule = "always"            # or a daily window "01:00-05:00" (local time)

    [updates]
    window = "02:00-05:00"         # local time; deploy jobs wait QUEUED outside it
    require_signed = "auto"        # auto: when <state>/trust/ holds keys; true; false
    download_jitter_s = 30         # a random delay before a job's first download
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ConfigError
from inference.providers import ProviderSpec, provider_specs
from monitoring.sampling_policy import SamplingPolicy, parse_policy, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RUNTIMES = ("auto", "onnx", "tflite")
SWAP_POLICIES = ("availability", "memory")


@dataclass(frozen=True)
class ProbationConfig:
    """Probation after a hot swap (issue 3); ``None`` means "from the manifest, else built-in"."""

    frames: int | None = None
    seconds: float | None = None
    max_error_rate: float | None = None
    min_confidence_ratio: float | None = None
    max_seconds: float | None = None  # the deadline: past it without enough evidence, on_thin_evidence
    on_thin_evidence: str | None = None  # "rollback" (default) or "commit"


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the broker connection of the fleet channel (off without ``url``)."""

    url: str | None = None  # mqtt://host[:1883] or mqtts://host[:8883]
    device_id: str | None = None  # default: the host name
    group: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    prefix: str = "edge/v1"
    telemetry_s: float = 60.0  # a telemetry message this often
    events_per_min: float = 0.0  # detection events on {p}/{device}/events, at most this many (0: off)


@dataclass(frozen=True)
class UpdatesConfig:
    """``[updates]``: when and what the device installs."""

    window: str | None = None  # "02:00-05:00" local time; None: any time
    require_signed: str = "auto"  # auto (when trust/ holds keys) | always | never
    download_jitter_s: float = 0.0  # a random delay in [0, this] before a job's first download


@dataclass(frozen=True)
class MonitoringConfig:
    """``[monitoring]``: drift and decay (DESIGN §7; ``monitoring.drift_monitor``)."""

    enabled: bool = True
    sample_every: str = "1s"  # a time ("1s") or every Nth frame ("1": every frame)
    window: str = "60"  # tumbling window: N samples, or a time ("60s", "5m")
    alert_after: int = 3  # K consecutive drifted windows raise an alert
    clear_after: int = 3  # consecutive calm windows clear it
    learn: str = "1h"  # without a reference in the bundle: learn one from this much live data
    metrics: str | None = None  # /metrics (Prometheus) on HOST:PORT or PORT (loopback); None: off
    per_frame: str = "off"  # per-frame rows in metrics.db: off | sampled | all
    retention_days: float = 30.0  # raw windows, scores, events older than this are deleted
    max_db_mb: float = 256.0  # metrics.db past this size loses its oldest raw rows first


@dataclass(frozen=True)
class SpoolConfig:
    """``[spool]``: frames kept for upload under ``<state>/spool/`` (``monitoring.spool``)."""

    max_bytes: int = 500_000_000  # "500MB" in a file
    max_items: int = 20_000


@dataclass(frozen=True)
class UploadConfig:
    """``[upload]``: where spooled frames go (``monitoring.upload_target``, ``monitoring.uploader``)."""

    url: str | None = None  # s3://bucket/prefix or http(s)://host/path/{sha256}.jpg; None: keep them
    endpoint: str | None = None  # an S3-compatible store's http(s)://host[:port]; None: AWS
    region: str = "us-east-1"
    credentials_file: Path | None = None  # S3: AWS credential_process JSON
    token_file: Path | None = None  # http(s): a bearer token
    method: str = "PUT"  # http(s): PUT to the URL template, or POST multipart
    schedule: str = "always"  # or a daily window "01:00-05:00" (local time)
    concurrency: int = 2
    retry_min_s: float = 1.0
    retry_max_s: float = 120.0
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Config:
    model: str | None = None  # zoo name, bundle folder or bare model file
    source: str | None = None  # see agent.source.open_source
    state_dir: Path | None = None  # default: agent.paths.default_state_dir()
    max_frames: int | None = None  # stop after N frames (None: run until the source ends or a signal)
    results: str | None = None  # "-" for stdout, or a JSON-lines file
    threads: int | None = None  # runtime threads (None: the engine decides)
    runtime: str = "auto"  # auto | onnx | tflite
    input_size: tuple[int, int] | None = None  # (height, width) for a model's dynamic input dims
    # execution providers in order of preference, each with its options (inference/providers.py)
    providers: tuple[ProviderSpec, ...] = (ProviderSpec("CPUExecutionProvider"),)
    log_level: str = "info"
    loop: bool = False  # replay a file or folder source at its end
    models_dir: Path | None = None  # model store root (issue 3); its incoming/ is watched
    control: str | None = (
        None  # control API: HOST:PORT, PORT, unix:/path or "off" (default with a store: 127.0.0.1:8470)
    )
    swap_policy: str = "availability"  # availability | memory (issue 3)
    allow_downgrade: bool = (
        False  # accept a lower version from the drop folder (explicit activation always may)
    )
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)

    @property
    def collecting(self) -> bool:
        """Sampling runs: ``[sampling] enabled``, else when strategies or an upload URL are given."""
        if self.sampling.enabled is not None:
            return self.sampling.enabled
        return self.sampling.explicit_strategies or self.upload.url is not None

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, ``None`` dropped): what ``config check`` prints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "sampling":
                if value != SamplingPolicy():
                    out[f.name] = value.to_dict()
            elif f.name in SECTIONS:
                table = {
                    k: str(v) if isinstance(v, Path) else v
                    for k, v in dataclasses.asdict(value).items()
                    if v is not None
                }
                if table and value != type(value)():
                    out[f.name] = table
            elif isinstance(value, Path):
                out[f.name] = str(value)
            elif f.name == "providers":
                out[f.name] = [p.to_json() for p in value]
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            elif value is not None:
                out[f.name] = value
        return out


# Keys that SIGHUP can apply to a running agent; any other change needs a restart.
LIVE_KEYS = frozenset({"log_level", "results", "max_frames"})

Check = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {_type_name(value)} {value!r}")
    return value


def _int(minimum: int) -> Check:
    # No coercion: a quoted "4" is a string in TOML, and a flag arrives as an int (argparse type=int).
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and value.strip().isdigit():
                hint = f" (write it without quotes: {value.strip()})"
            raise ConfigError(f"{where}: expected an integer, got {_type_name(value)} {value!r}{hint}")
        if value < minimum:
            raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
        return value

    return check


def _number(maximum: float | None = None) -> Check:
    """A finite number >= 0 (and <= ``maximum``): the bounds of a manifest's probation section."""

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        if value < 0 or (maximum is not None and value > maximum):
            bounds = ">= 0" if maximum is None else f"in [0, {maximum:g}]"
            raise ConfigError(f"{where}: must be {bounds}, got {value}")
        return float(value)

    return check


_float = _number()


def _positive(value: Any, where: str) -> float:
    out = _float(value, where)
    if out == 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")
    return float(out)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {_type_name(value)} {value!r}")
    return value


def _choice(options: tuple[str, ...]) -> Check:
    def check(value: Any, where: str) -> str:
        text = _str(value, where).lower()
        if text not in options:
            raise ConfigError(f"{where}: {text!r} is not one of {', '.join(options)}")
        return text

    return check


def _path(value: Any, where: str) -> Path:
    if isinstance(value, Path):
        return value
    return Path(_str(value, where)).expanduser()


def _input_size(value: Any, where: str) -> tuple[int, int]:
    """``"48x320"`` (height x width), ``640`` or ``[48, 320]``."""
    from inference.preprocess import parse_size

    if isinstance(value, list) and len(value) == 2 and all(_is_plain_int(v) for v in value):
        value = f"{value[0]}x{value[1]}"
    elif _is_plain_int(value):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f'{where}: expected an input size "HEIGHTxWIDTH" such as "48x320", got {value!r}')
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_plain_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _providers(value: Any, where: str) -> tuple[ProviderSpec, ...]:
    """``["xnnpack", "cpu"]`` (names or aliases; a comma-separated string from a flag), or tables
    ``[[providers]] name = "tensorrt" options = { trt_fp16_enable = true }``, mixed as needed."""
    return provider_specs(value, where)


DEFAULT_CONTROL_HOST = "127.0.0.1"
CONTROL_FORMS = "HOST:PORT (e.g. 127.0.0.1:8470), :PORT, PORT, unix:/path or off"
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_UNIX_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


def parse_control_address(spec: str) -> tuple[str, int] | Path | None:
    """The control API address ``spec`` as ``(host, port)``, a unix socket ``Path``, or ``None``
    for ``off``. Pure; raises ``ConfigError`` for anything the control server could not serve.

    ``HOST:PORT``, ``:PORT`` and ``PORT`` (host 127.0.0.1; port 0-65535, 0 picks a free one),
    ``unix:/path/to.sock``, or ``off`` (any case). HOST is an IPv4 address or a host name.
    """
    text = spec.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError(f"control address {spec!r}: {why}; use {CONTROL_FORMS}")

    if text.lower() == "off":
        return None
    if text.startswith("unix:"):
        path = text[5:]
        if not path.strip():
            raise bad("no socket path after unix:")
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise bad(f"a unix socket path is at most {_UNIX_PATH_MAX} bytes")
        return Path(path)
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()):
        raise bad(f"the port {port!r} is not a number" if port else "no port")
    port_n = int(port)
    if port_n > 65535:
        raise bad(f"port {port_n} is not in 0-65535")
    if not host:
        return (DEFAULT_CONTROL_HOST, port_n)
    if _DOTTED_NUMBERS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv4 address") from None
    elif not (host.isascii() and _HOSTNAME.fullmatch(host) and len(host) <= 253):
        raise bad(f"{host!r} is not an IPv4 address or a host name (IPv6 is not served)")
    return (host, port_n)


def _control(value: Any, where: str) -> str:
    # A bare TOML integer is a port. The string is kept as written (stripped; "off" lower-cased,
    # as the daemon compares it), after the whole grammar is checked here.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _str(value, where).strip()
    try:
        address = parse_control_address(text)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return "off" if address is None else text


def _probation(value: Any, where: str) -> ProbationConfig:
    if isinstance(value, ProbationConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table such as [probation] frames = 300, got {value!r}")
    checks: dict[str, Check] = {
        "frames": _int(1),
        "seconds": _float,
        "max_error_rate": _number(1.0),
        "min_confidence_ratio": _number(1.0),
        "max_seconds": _positive,
        "on_thin_evidence": _choice(("rollback", "commit")),
    }
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in checks:
            raise ConfigError(
                f"{where}: unknown key {key!r}; valid keys in [probation]: {', '.join(sorted(checks))}"
            )
        out[key] = checks[key](item, f"{where}.{key}")
    if (
        out.get("seconds") is not None
        and out.get("max_seconds") is not None
        and out["seconds"] > out["max_seconds"]
    ):
        raise ConfigError(
            f"{where}: seconds ({out['seconds']:g}) is over max_seconds ({out['max_seconds']:g}): the "
            "deadline would fall before probation could gather its evidence; raise max_seconds"
        )
    return ProbationConfig(**out)


def _table(cls: type[Any], checks: Mapping[str, Check], example: str) -> Callable[[Any, str], Any]:
    """A config table (``[mqtt]``): known keys only, each checked; an instance passes as is."""

    def check(value: Any, where: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table such as {example}, got {value!r}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in checks:
                raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(checks))}")
            out[key] = None if item is None else checks[key](item, f"{where}.{key}")
        return cls(**out)

    return check


def _mqtt_url(value: Any, where: str) -> str:
    text = _str(value, where).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts") or not rest or "/" in rest.rstrip("/"):
        raise ConfigError(
            f"{where}: {text!r} is not a broker URL; use mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)"
        )
    host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest.rstrip("/"), "", "")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{where}: port {port!r} in {text!r} is not in 1-65535")
    if not host:
        raise ConfigError(f"{where}: no host in {text!r}")
    return text


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _ident(value: Any, where: str) -> str:
    text = _str(value, where)
    if not _ID.fullmatch(text) or text == "group":
        raise ConfigError(
            f"{where}: {text!r} is not usable in MQTT topics: use 1-64 letters, digits, '.', '_' or '-' "
            '(starting with a letter or digit; not "group")'
        )
    return text


def _prefix(value: Any, where: str) -> str:
    text = _str(value, where)
    if any(c in text for c in "+#\x00") or text.startswith("/") or text.endswith("/") or "//" in text:
        raise ConfigError(
            f"{where}: {text!r}: a topic prefix such as edge/v1 (no wildcards, no '/' at the ends)"
        )
    return text


def _window(value: Any, where: str) -> str:
    from ota.update_window import UpdateWindow

    text = _str(value, where)
    try:
        UpdateWindow.parse(text)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return text


def _require_signed(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "always" if value else "never"
    return str(_choice(("auto", "always", "never"))(value, where))


_mqtt = _table(
    MqttConfig,
    {
        "url": _mqtt_url,
        "device_id": _ident,
        "group": _ident,
        "ca": _path,
        "cert": _path,
        "key": _path,
        "username": _str,
        "password_file": _path,
        "prefix": _prefix,
        "telemetry_s": _positive,
        "events_per_min": _float,
    },
    '[mqtt] url = "mqtts://broker:8883"',
)
_updates = _table(
    UpdatesConfig,
    {"window": _window, "require_signed": _require_signed, "download_jitter_s": _float},
    '[updates] window = "02:00-05:00"',
)


def _span(value: Any, where: str) -> str:
    from monitoring.drift_monitor import Span

    return str(Span.parse(value, where))


def _window_span(value: Any, where: str) -> str:
    from monitoring.drift_monitor import Span
    from monitoring.reference import WINDOW_SIZES

    span = Span.parse(value, where)
    if span.count is not None and span.count < WINDOW_SIZES[0]:
        raise ConfigError(
            f"{where}: {value!r}: a window needs at least {WINDOW_SIZES[0]} samples to be judged "
            f"(the reference's smallest window); give {WINDOW_SIZES[0]} or more, or a time such as 60s"
        )
    return str(span)


def _learn_span(value: Any, where: str) -> str:
    from monitoring.drift_monitor import MAX_LEARN_SAMPLES, Span
    from monitoring.reference import MIN_SAMPLES

    span = Span.parse(value, where)
    if span.count is not None and not MIN_SAMPLES <= span.count <= MAX_LEARN_SAMPLES:
        raise ConfigError(
            f"{where}: {value!r}: learn from {MIN_SAMPLES} to {MAX_LEARN_SAMPLES} samples, or give a time "
            "such as 1h"
        )
    return str(span)


def _metrics_address(value: Any, where: str) -> str:
    text = str(_int(1)(value, where)) if isinstance(value, int) else _str(value, where)
    parse_metrics_address(text, where)
    return text


def parse_metrics_address(text: str, where: str = "--metrics") -> tuple[str, int]:
    """``PORT`` (loopback) or ``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isdigit() and 0 <= int(port) < 65536):
        raise ConfigError(f"{where}: {text!r}: give PORT or HOST:PORT, e.g. 9464 or 127.0.0.1:9464")
    return host, int(port)


_monitoring = _table(
    MonitoringConfig,
    {
        "enabled": _bool,
        "sample_every": _span,
        "window": _window_span,
        "alert_after": _int(1),
        "clear_after": _int(1),
        "learn": _learn_span,
        "metrics": _metrics_address,
        "per_frame": _choice(("off", "sampled", "all")),
        "retention_days": _positive,
        "max_db_mb": _positive,
    },
    '[monitoring] window = "60s"',
)


def _size(value: Any, where: str) -> int:
    return parse_size(value, where)


def _schedule(value: Any, where: str) -> str:
    text = _str(value, where)
    if text == "always":
        return text
    try:
        return _window(text, where)
    except ConfigError:
        raise ConfigError(
            f'{where}: {text!r}: give "always" or a daily window HH:MM-HH:MM (local time), e.g. "01:00-05:00"'
        ) from None


def _upload_method(value: Any, where: str) -> str:
    return str(_choice(("put", "post"))(value, where)).upper()


def _upload_url(value: Any, where: str) -> str:
    text = _str(value, where).strip()
    if not text.startswith(("s3://", "http://", "https://")):
        raise ConfigError(
            f"{where}: {text!r}: give s3://bucket/prefix or an http(s):// URL such as "
            "https://host/frames/{device}/{sha256}.jpg"
        )
    return text


def _sampling(value: Any, where: str) -> SamplingPolicy:
    return parse_policy(value, where)


_spool = _table(SpoolConfig, {"max_bytes": _size, "max_items": _int(1)}, '[spool] max_bytes = "500MB"')
_upload_table = _table(
    UploadConfig,
    {
        "url": _upload_url,
        "endpoint": _str,
        "region": _str,
        "credentials_file": _path,
        "token_file": _path,
        "method": _upload_method,
        "schedule": _schedule,
        "concurrency": _int(1),
        "retry_min_s": _positive,
        "retry_max_s": _positive,
        "timeout_s": _positive,
    },
    '[upload] url = "s3://bucket/prefix"',
)


def _upload(value: Any, where: str) -> UploadConfig:
    if isinstance(value, UploadConfig):
        return value
    return check_upload(_upload_table(value, where), where)


def check_upload(cfg: UploadConfig, where: str) -> UploadConfig:
    """``[upload]`` checked whole: the target is built once (no connection) so a bad URL,
    endpoint, method or a missing credentials file setting fails here, as ``run`` would."""
    if cfg.concurrency > 16:
        raise ConfigError(f"{where}.concurrency: {cfg.concurrency} is over 16; a device needs 1-4")
    if cfg.retry_min_s > cfg.retry_max_s:
        raise ConfigError(
            f"{where}: retry_min_s ({cfg.retry_min_s:g}) is over retry_max_s ({cfg.retry_max_s:g})"
        )
    if cfg.url is not None:
        from monitoring.upload_target import make_target

        try:
            make_target(
                cfg.url,
                method=cfg.method,
                endpoint=cfg.endpoint,
                region=cfg.region,
                credentials_file=cfg.credentials_file,
                token_file=cfg.token_file,
                timeout_s=cfg.timeout_s,
            ).close()
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return cfg


SECTIONS = ("probation", "mqtt", "updates", "monitoring", "sampling", "spool", "upload")

# ``run`` flags that set a key of a table: flag dest -> (table, key)
TABLE_FLAGS = {
    "mqtt": ("mqtt", "url"),
    "device_id": ("mqtt", "device_id"),
    "group": ("mqtt", "group"),
    "window": ("monitoring", "window"),
    "metrics": ("monitoring", "metrics"),
    "upload": ("upload", "url"),
}


# table flags whose value is checked alone, then the merged table as a whole
_TABLE_FIELD_CHECKS: dict[str, Check] = {"upload": _upload_url}

CHECKS: dict[str, Check] = {
    "model": _str,
    "source": _str,
    "state_dir": _path,
    "max_frames": _int(1),
    "results": _str,
    "threads": _int(1),
    "runtime": _choice(RUNTIMES),
    "input_size": _input_size,
    "providers": _providers,
    "log_level": _choice(LOG_LEVELS),
    "loop": _bool,
    "models_dir": _path,
    "control": _control,
    "swap_policy": _choice(SWAP_POLICIES),
    "allow_downgrade": _bool,
    "probation": _probation,
    "mqtt": _mqtt,
    "updates": _updates,
    "monitoring": _monitoring,
    "sampling": _sampling,
    "spool": _spool,
    "upload": _upload,
}
assert set(CHECKS) == {f.name for f in dataclasses.fields(Config)}, "CHECKS must cover every Config field"

VALID_KEYS = tuple(CHECKS)


def parse_config(data: Mapping[str, Any], where: str, base_dir: Path | None = None) -> Config:
    """Build a ``Config`` from a mapping (a parsed TOML document); ``where`` names it in errors."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in CHECKS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; valid keys: {', '.join(VALID_KEYS)} "
                f"(flags use dashes, keys use underscores: max_frames)"
            )
        values[key] = CHECKS[key](value, f"{where}: key {key!r}")
    if base_dir is not None:
        values = _resolve_relative(values, base_dir)
    return Config(**values)


def _resolve_relative(values: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in ("state_dir", "models_dir"):
        if key in values and not values[key].is_absolute():
            values[key] = base / values[key]
    if "mqtt" in values:
        m = values["mqtt"]
        paths = {
            k: base / getattr(m, k)
            for k in ("ca", "cert", "key", "password_file")
            if getattr(m, k) is not None and not getattr(m, k).is_absolute()
        }
        if paths:
            values["mqtt"] = dataclasses.replace(m, **paths)
    if "upload" in values:
        u = values["upload"]
        paths = {
            k: base / getattr(u, k)
            for k in ("credentials_file", "token_file")
            if getattr(u, k) is not None and not getattr(u, k).is_absolute()
        }
        if paths:
            values["upload"] = dataclasses.replace(u, **paths)
    if "results" in values and values["results"] != "-" and not Path(values["results"]).is_absolute():
        values["results"] = str(base / values["results"])
    for key in ("model", "source"):  # may be a zoo name or a source spec: only when that file exists
        if key in values and not Path(values[key]).is_absolute() and (base / values[key]).exists():
            values[key] = str(base / values[key])
    return values


def load_config(path: Path) -> Config:
    """Read and check a TOML config file. Raises ``ConfigError`` naming the file and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: check the path given to --config") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}; check its permissions") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax") from None
    return parse_config(data, str(path), base_dir=path.parent.absolute())


def apply_overrides(config: Config, overrides: Mapping[str, Any], where: str = "command line") -> Config:
    """``config`` with every non-``None`` override applied (flags win over the file)."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in TABLE_FLAGS:
            table, field_name = TABLE_FLAGS[key]
            flag = "--" + key.replace("_", "-")
            current = changes.get(table, getattr(config, table))
            checker = _TABLE_FIELD_CHECKS.get(table)
            if checker is not None:  # the value alone; the merged table is checked below
                checked_value = checker(value, f"{where}: {flag}")
            else:
                checked_value = getattr(CHECKS[table]({field_name: value}, f"{where}: {flag}"), field_name)
            changes[table] = dataclasses.replace(current, **{field_name: checked_value})
            if table == "upload":
                check_upload(changes[table], f"{where}: {flag}")
            continue
        if key not in CHECKS:
            raise ConfigError(f"{where}: unknown setting {key!r}; valid: {', '.join(VALID_KEYS)}")
        flag = "--" + key.replace("_", "-")
        changes[key] = CHECKS[key](value, f"{where}: {flag}")
    return config.replace(**changes) if changes else config


def changed_keys(old: Config, new: Config) -> list[str]:
    """The keys whose values differ, in field order."""
    return [f.name for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(new, f.name)]

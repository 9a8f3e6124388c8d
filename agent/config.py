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

    [probation]
    frames = 300
    seconds = 60
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
class Config:
    model: str | None = None  # zoo name, bundle folder or bare model file
    source: str | None = None  # see agent.source.open_source
    state_dir: Path | None = None  # default: agent.paths.default_state_dir()
    max_frames: int | None = None  # stop after N frames (None: run until the source ends or a signal)
    results: str | None = None  # "-" for stdout, or a JSON-lines file
    threads: int | None = None  # runtime threads (None: the engine decides)
    runtime: str = "auto"  # auto | onnx | tflite
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # ONNX Runtime execution providers
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

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, ``None`` dropped): what ``config check`` prints."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "probation":
                table = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
                if table:
                    out[f.name] = table
            elif isinstance(value, Path):
                out[f.name] = str(value)
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


def _providers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"{where}: expected a list of ONNX Runtime provider names such as "
            f'["CPUExecutionProvider"], got {value!r}'
        )
    return tuple(value)


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


CHECKS: dict[str, Check] = {
    "model": _str,
    "source": _str,
    "state_dir": _path,
    "max_frames": _int(1),
    "results": _str,
    "threads": _int(1),
    "runtime": _choice(RUNTIMES),
    "providers": _providers,
    "log_level": _choice(LOG_LEVELS),
    "loop": _bool,
    "models_dir": _path,
    "control": _control,
    "swap_policy": _choice(SWAP_POLICIES),
    "allow_downgrade": _bool,
    "probation": _probation,
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
        if key not in CHECKS:
            raise ConfigError(f"{where}: unknown setting {key!r}; valid: {', '.join(VALID_KEYS)}")
        flag = "--" + key.replace("_", "-")
        changes[key] = CHECKS[key](value, f"{where}: {flag}")
    return config.replace(**changes) if changes else config


def changed_keys(old: Config, new: Config) -> list[str]:
    """The keys whose values differ, in field order."""
    return [f.name for f in dataclasses.fields(Config) if getattr(old, f.name) != getattr(new, f.name)]

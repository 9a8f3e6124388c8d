"""The agent's configuration: one frozen ``Config``, loaded from TOML, overridden by flags.

Keys mirror the ``edge-agent run`` flags (``max_frames`` for ``--max-frames``). Unknown keys
and wrong types are ``ConfigError`` naming the key, the file and what is accepted, so a typo
never silently falls back to a default. Relative paths in a file are relative to the file's
folder. A ``[probation]`` table holds the probation defaults used by hot swaps.

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
    def check(value: Any, where: str) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_type_name(value)} {value!r}")
        if value < minimum:
            raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
        return value

    return check


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {_type_name(value)} {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: must be >= 0, got {value}")
    return float(value)


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


def _control(value: Any, where: str) -> str:
    # HOST:PORT, :PORT, PORT or unix:/path; agent.control.parse_address checks the details.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _str(value, where)


def _probation(value: Any, where: str) -> ProbationConfig:
    if isinstance(value, ProbationConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table such as [probation] frames = 300, got {value!r}")
    checks: dict[str, Check] = {
        "frames": _int(1),
        "seconds": _float,
        "max_error_rate": _float,
        "min_confidence_ratio": _float,
    }
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in checks:
            raise ConfigError(
                f"{where}: unknown key {key!r}; valid keys in [probation]: {', '.join(sorted(checks))}"
            )
        out[key] = checks[key](item, f"{where}.{key}")
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

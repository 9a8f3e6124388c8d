"""Execution providers: which engine backends run a model, in order, each with its own options.

A ``ProviderSpec`` is one entry of ``RuntimeOptions.providers``: an ONNX Runtime provider name
(or a short alias: ``cpu``, ``xnnpack``, ``cuda``, ``tensorrt``, ``qnn``, ``coreml``, ``openvino``,
``nnapi``) and its options. ``build_provider_list`` turns the list a device asks for into the
``(name, options)`` list given to ``onnxruntime.InferenceSession``: providers this build lacks
are skipped with one log line each, CPU always comes last, and the options the agent owns are
filled in (a TensorRT engine and timing cache keyed by the model's sha256 and the runtime
versions, QNN's HTP backend, XNNPACK's threads). It is pure apart from reading the model file
for its sha256, which happens only when TensorRT is used.

For a ``.tflite`` model LiteRT reads the same list: an ``xnnpack`` entry is its XNNPACK
delegate (``litert_options``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ConfigError

log = logging.getLogger(__name__)

OptionValue = str | int | float | bool

CPU = "CPUExecutionProvider"
XNNPACK = "XnnpackExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
QNN = "QNNExecutionProvider"

ALIASES: dict[str, str] = {
    "cpu": CPU,
    "xnnpack": XNNPACK,
    "cuda": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "qnn": QNN,
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
}
# the canonical spelling of the names people get wrong in case ("TensorRTExecutionProvider")
_CANONICAL = {name.lower(): name for name in ALIASES.values()}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*ExecutionProvider")

QNN_HTP_BACKEND = "QnnHtp.dll" if os.name == "nt" else "libQnnHtp.so"


def canonical_name(name: str, where: str = "providers") -> str:
    """``name`` as onnxruntime spells it: an alias or a full name in any case; else ``ConfigError``."""
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    if key in _CANONICAL:
        return _CANONICAL[key]
    if _NAME.fullmatch(name.strip()):
        return name.strip()  # a provider this table does not know (MIGraphX, Dnnl, ...): as given
    raise ConfigError(
        f"{where}: {name!r} is not an execution provider; use a short name ({', '.join(ALIASES)}) "
        "or an onnxruntime provider name such as CPUExecutionProvider"
    )


@dataclass(frozen=True)
class ProviderSpec:
    """One execution provider and its options (``{"trt_fp16_enable": True}``); no options = defaults."""

    name: str
    options: Mapping[str, OptionValue] = field(default_factory=dict)

    def to_json(self) -> str | dict[str, Any]:
        """The config form: the bare name, or ``{"name": ..., "options": {...}}``."""
        return self.name if not self.options else {"name": self.name, "options": dict(self.options)}


def provider_spec(value: Any, where: str = "providers") -> ProviderSpec:
    """A ``ProviderSpec`` from a spec, a name or alias, or a ``{"name", "options"}`` table.

    Unknown keys and option values that are not strings, numbers or booleans are ``ConfigError``
    naming them."""
    if isinstance(value, ProviderSpec):
        return ProviderSpec(canonical_name(value.name, where), dict(value.options))
    if isinstance(value, str):
        return ProviderSpec(canonical_name(value, where))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"name", "options"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r} in a provider entry; valid: name, options"
            )
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f'{where}: a provider entry needs a name, e.g. name = "cuda"; got {value!r}')
        options = value.get("options", {})
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}: provider {name!r}: options must be a table, got {options!r}")
        for key, opt in options.items():
            if not isinstance(key, str) or not isinstance(opt, (str, int, float, bool)):
                raise ConfigError(
                    f"{where}: provider {name!r}: option {key!r} = {opt!r} must be a string, number or "
                    "true/false"
                )
        return ProviderSpec(canonical_name(name, f"{where}: provider"), dict(options))
    raise ConfigError(
        f'{where}: expected a provider name such as "cpu" or a table {{ name = "...", options = {{...}} }}, '
        f"got {type(value).__name__} {value!r}"
    )


def provider_specs(values: Any, where: str = "providers") -> tuple[ProviderSpec, ...]:
    """A list of provider entries (names, tables, specs; a string may be comma-separated)."""
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    elif isinstance(values, (ProviderSpec, Mapping)):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(
            f'{where}: expected a list of execution providers such as ["xnnpack", "cpu"], got {values!r}'
        )
    return tuple(provider_spec(v, where) for v in values)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (the ``tensorrt`` Python package), or None if unknown."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def trt_cache_dir(cache_dir: Path, sha256: str, ort_version: str, trt_version: str | None) -> Path:
    """``<cache>/trt/<sha256[:16]>-ort<version>[-trt<version>]``: a new model or runtime, a new folder."""
    name = f"{sha256[:16]}-ort{ort_version}" + (f"-trt{trt_version}" if trt_version else "")
    return Path(cache_dir) / "trt" / re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def build_provider_list(
    specs: Iterable[ProviderSpec],
    available: Sequence[str],
    model: Path | str,
    cache_dir: Path,
    ort_version: str,
    trt_version: str | None = None,
    threads: int | None = None,
) -> list[tuple[str, dict[str, OptionValue]]]:
    """The ``(name, options)`` list for ``InferenceSession(providers=...)``.

    ``specs`` in order of preference; ``available`` is ``ort.get_available_providers()``;
    ``model`` the model file (hashed only when TensorRT is in the list) or its sha256 hex.
    A provider missing from ``available`` is skipped with one warning line; duplicates keep the
    first; CPU comes last (with its options if listed). Options the user gave always win over
    the ones filled in here."""
    out: list[tuple[str, dict[str, OptionValue]]] = []
    cpu_options: dict[str, OptionValue] = {}
    seen: set[str] = set()
    for spec in specs:
        name = canonical_name(spec.name)
        if name in seen:
            continue
        seen.add(name)
        opts: dict[str, OptionValue] = dict(spec.options)
        if name == CPU:
            cpu_options = opts
            continue
        if name not in available:
            log.warning(
                "execution provider %s is not in this onnxruntime build (it has %s): skipped",
                name,
                ", ".join(available),
            )
            continue
        if name == TENSORRT:
            sha = model if isinstance(model, str) else file_sha256(Path(model))
            folder = str(trt_cache_dir(cache_dir, sha, ort_version, trt_version))
            opts.setdefault("trt_engine_cache_enable", True)
            opts.setdefault("trt_engine_cache_path", folder)
            opts.setdefault("trt_timing_cache_enable", True)
            opts.setdefault("trt_timing_cache_path", folder)
        elif name == QNN:
            if "backend_path" not in opts and "backend_type" not in opts:  # mutually exclusive in ORT
                opts["backend_path"] = QNN_HTP_BACKEND
        elif name == XNNPACK and threads is not None:
            opts.setdefault("intra_op_num_threads", threads)
        out.append((name, opts))
    out.append((CPU, cpu_options))
    return out


def trt_cache_folders(providers: Sequence[tuple[str, Mapping[str, OptionValue]]]) -> list[Path]:
    """The folders the TensorRT entry will write its engine and timing caches to."""
    return sorted(
        {
            Path(str(opts[key]))
            for name, opts in providers
            if name == TENSORRT
            for key in ("trt_engine_cache_path", "trt_timing_cache_path")
            if key in opts
        }
    )


LITERT_XNNPACK_OPTIONS = ("num_threads", "intra_op_num_threads")


def litert_options(
    specs: Iterable[ProviderSpec], xnnpack: bool, threads: int | None
) -> tuple[bool, int | None]:
    """``(xnnpack, threads)`` for LiteRT from the provider list: an ``xnnpack`` entry turns the
    XNNPACK delegate on (its ``num_threads`` option wins over ``threads``); CPU alone keeps
    ``xnnpack`` as given; other providers are ONNX Runtime's and skipped with one log line."""
    use_xnnpack = xnnpack
    for spec in specs:
        name = canonical_name(spec.name)
        if name == XNNPACK:
            use_xnnpack = True
            for key, value in spec.options.items():
                if key not in LITERT_XNNPACK_OPTIONS:
                    raise ConfigError(
                        f"providers: option {key!r} of xnnpack is not a LiteRT option; "
                        f"LiteRT's XNNPACK takes {', '.join(LITERT_XNNPACK_OPTIONS)}"
                    )
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"providers: xnnpack option {key} = {value!r}: give a positive integer")
                threads = value
        elif name != CPU:
            log.warning("execution provider %s is for ONNX Runtime; LiteRT skips it", name)
    return use_xnnpack, threads


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-agent`` (``~/.cache/edge-agent``): where a run without a state root
    (``bench``, a bare ``load_runtime``) keeps engine caches. The agent passes ``<state>/cache``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent"

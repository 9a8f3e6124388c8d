"""The ``Runtime`` protocol: run one loaded model, whatever the engine.

Implementations: ``OnnxRuntime`` (inference/onnx_runtime.py) and ``LiteRtRuntime``
(inference/litert_runtime.py). They are kept in the plain registry ``RUNTIMES`` and
chosen by file suffix (``.onnx`` / ``.tflite``) or by name from config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from inference.errors import BundleError, ConfigError
from inference.providers import ProviderSpec, provider_specs

__all__ = ["ProviderSpec", "Runtime", "RuntimeOptions", "TensorInfo", "load_runtime", "runtime_kind_for"]


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the runtime reports it.

    ``shape`` holds ``None`` for a dynamic dimension. ``quant`` is ``(scale, zero_point)``
    for a quantised (uint8/int8) tensor, else ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[np.generic]
    quant: tuple[float, int] | None = None

    @property
    def is_dynamic(self) -> bool:
        return any(d is None for d in self.shape)


@dataclass(frozen=True)
class RuntimeOptions:
    """Engine settings from config or flags. ``threads=None`` lets the engine decide.

    ``providers`` is normalised to a tuple of ``ProviderSpec`` (plain names and aliases are
    accepted: ``("cuda", "cpu")``); read it typed through ``specs``. ``cache_dir`` is where
    engine caches live (TensorRT): the agent passes ``<state>/cache``; ``None`` is the user's
    cache folder (inference/providers.py ``default_cache_dir``). ``ort_model`` is the ORT-format
    companion an ONNX model is loaded from instead of its ``.onnx`` (inference/ort_format.py
    ``runtime_options`` sets it for a verified bundle that has one)."""

    threads: int | None = None
    inter_op_threads: int | None = None
    providers: Sequence[ProviderSpec | str] = (ProviderSpec("CPUExecutionProvider"),)
    graph_optimization: str = "all"  # disable | basic | extended | all
    xnnpack: bool = True
    extra: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    ort_model: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", provider_specs(self.providers, "runtime providers"))

    @property
    def specs(self) -> tuple[ProviderSpec, ...]:
        """``providers``, typed (always ``ProviderSpec`` after construction)."""
        return tuple(p for p in self.providers if isinstance(p, ProviderSpec))


Array = npt.NDArray[np.generic]


@runtime_checkable
class Runtime(Protocol):
    """One loaded model. ``run`` takes one array per input, in ``inputs`` order."""

    kind: str  # "onnx" | "tflite"
    version: str  # the engine's version string
    provider: str  # what runs most of the model: an ORT provider name, or LiteRT's "xnnpack" | "builtin"
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, feeds: Sequence[Array]) -> list[Array]: ...

    def close(self) -> None: ...


RuntimeFactory = Callable[[Path, RuntimeOptions], Runtime]

SUFFIXES: dict[str, str] = {".onnx": "onnx", ".tflite": "tflite"}


def _onnx(path: Path, options: RuntimeOptions) -> Runtime:
    from inference.onnx_runtime import OnnxRuntime

    return OnnxRuntime(path, options)


def _tflite(path: Path, options: RuntimeOptions) -> Runtime:
    from inference.litert_runtime import LiteRtRuntime

    return LiteRtRuntime(path, options)


RUNTIMES: dict[str, RuntimeFactory] = {"onnx": _onnx, "tflite": _tflite}


def runtime_kind_for(path: Path, kind: str | None = None) -> str:
    """The runtime name for a model file: ``kind`` if given, else by suffix."""
    if kind not in (None, "auto"):
        if kind not in RUNTIMES:
            raise ConfigError(f"unknown runtime {kind!r}: use one of {sorted(RUNTIMES)} or 'auto'")
        return kind
    try:
        return SUFFIXES[Path(path).suffix.lower()]
    except KeyError:
        raise BundleError(
            f"{path}: cannot tell the model format from its name; "
            f"use a file ending in {sorted(SUFFIXES)} or set the runtime explicitly"
        ) from None


def load_runtime(path: Path, options: RuntimeOptions | None = None, kind: str | None = None) -> Runtime:
    """Load ``path`` with the runtime named by ``kind`` or by its suffix.

    Raises ``BundleError`` naming the file when it is missing, unreadable or not a model.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file {path} does not exist or is not a file: check the path")
    return RUNTIMES[runtime_kind_for(path, kind)](path, options or RuntimeOptions())

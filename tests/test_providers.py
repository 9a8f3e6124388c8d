"""Execution providers: the provider list with options, the fall back down the list, which one runs.

The GPU and NPU paths (CUDA, TensorRT, QNN) cannot run on this CPU build: their option building
is tested as a pure function; the session-level behaviour is tested with the CPU provider, with
providers this build lacks, and with an injected session factory whose first provider fails.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from inference.errors import BundleError, ConfigError
from inference.onnx_runtime import OnnxRuntime
from inference.providers import (
    CPU,
    CUDA,
    QNN,
    TENSORRT,
    XNNPACK,
    ProviderSpec,
    build_provider_list,
    litert_options,
    provider_specs,
    trt_cache_dir,
)
from inference.runtime import RuntimeOptions, load_runtime

ALL = [TENSORRT, CUDA, QNN, XNNPACK, CPU]
SHA = "ab" * 32


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- the pure list ---------------------------------------------------------------------------


def test_tensorrt_gets_an_engine_and_timing_cache_keyed_by_model_and_versions(tmp_path: Path) -> None:
    specs = provider_specs([{"name": "tensorrt", "options": {"trt_fp16_enable": True}}, "cuda"])
    plan = build_provider_list(specs, ALL, SHA, tmp_path, "1.20.0", trt_version="10.3.0")
    folder = str(tmp_path / "trt" / "abababababababab-ort1.20.0-trt10.3.0")
    assert plan == [
        (
            TENSORRT,
            {
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": folder,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": folder,
            },
        ),
        (CUDA, {}),
        (CPU, {}),
    ]


def test_the_trt_cache_folder_changes_with_the_model_and_each_runtime_version(tmp_path: Path) -> None:
    base = trt_cache_dir(tmp_path, SHA, "1.20.0", "10.3.0")
    assert trt_cache_dir(tmp_path, "cd" * 32, "1.20.0", "10.3.0") != base
    assert trt_cache_dir(tmp_path, SHA, "1.20.1", "10.3.0") != base
    assert trt_cache_dir(tmp_path, SHA, "1.20.0", "10.4.0") != base
    assert trt_cache_dir(tmp_path, SHA, "1.20.0", None).name == "abababababababab-ort1.20.0"


def test_the_model_is_hashed_only_when_tensorrt_is_used(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    plan = build_provider_list([ProviderSpec(TENSORRT)], ALL, model, tmp_path, "1.20.0")
    assert sha[:16] in str(plan[0][1]["trt_engine_cache_path"])
    missing = tmp_path / "not-there.onnx"  # never opened: no TensorRT in the list
    assert build_provider_list([ProviderSpec(CUDA)], ALL, missing, tmp_path, "1.20.0") == [
        (CUDA, {}),
        (CPU, {}),
    ]
    # TensorRT requested but not in the build: skipped before any hashing
    assert build_provider_list([ProviderSpec(TENSORRT)], [CPU], missing, tmp_path, "1.20.0") == [(CPU, {})]


def test_user_options_win_over_the_filled_in_ones(tmp_path: Path) -> None:
    specs = provider_specs(
        [
            {
                "name": "trt",
                "options": {"trt_engine_cache_path": "/data/trt", "trt_timing_cache_enable": False},
            },
            {"name": "qnn", "options": {"backend_type": "cpu"}},
            {"name": "xnnpack", "options": {"intra_op_num_threads": 2}},
        ]
    )
    plan = dict(build_provider_list(specs, ALL, SHA, tmp_path, "1.20.0", threads=4))
    assert plan[TENSORRT]["trt_engine_cache_path"] == "/data/trt"
    assert plan[TENSORRT]["trt_timing_cache_enable"] is False
    assert plan[QNN] == {"backend_type": "cpu"}  # backend_path and backend_type exclude each other
    assert plan[XNNPACK] == {"intra_op_num_threads": 2}


def test_qnn_defaults_to_the_htp_backend_and_xnnpack_takes_the_threads(tmp_path: Path) -> None:
    plan = dict(build_provider_list(provider_specs(["qnn", "xnnpack"]), ALL, SHA, tmp_path, "1", threads=3))
    assert plan[QNN] == {"backend_path": "libQnnHtp.so"}
    assert plan[XNNPACK] == {"intra_op_num_threads": 3}


def test_cpu_is_always_last_duplicates_keep_the_first_and_missing_ones_log_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    specs = provider_specs([{"name": "cpu", "options": {"arena": "1"}}, "cuda", "xnnpack", "cuda"])
    with caplog.at_level(logging.WARNING):
        plan = build_provider_list(specs, [CUDA, CPU], SHA, tmp_path, "1.20.0")
    assert plan == [(CUDA, {}), (CPU, {"arena": "1"})]
    assert warnings_of(caplog) == [
        f"execution provider {XNNPACK} is not in this onnxruntime build (it has {CUDA}, {CPU}): skipped"
    ]


def test_runtime_options_accept_plain_names() -> None:
    opts = RuntimeOptions(providers=("cuda", "CPUExecutionProvider"))
    assert opts.providers == (ProviderSpec(CUDA), ProviderSpec(CPU)) and opts.specs == opts.providers
    assert RuntimeOptions().specs == (ProviderSpec(CPU),)
    with pytest.raises(ConfigError, match="'gpu' is not an execution provider"):
        RuntimeOptions(providers=("gpu",))


# -- ONNX Runtime sessions ------------------------------------------------------------------


def test_cpu_provider_is_reported(tiny_models: dict[str, Path]) -> None:
    rt = load_runtime(tiny_models["classifier"], RuntimeOptions(providers=("cpu",)))
    assert rt.provider == CPU and rt.providers == [CPU]  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", [CUDA, XNNPACK])
def test_a_provider_missing_from_the_build_falls_back_to_cpu_with_one_log_line(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    if missing in ort.get_available_providers():
        pytest.skip(f"this onnxruntime build has {missing}")
    with caplog.at_level(logging.WARNING):
        rt = load_runtime(tiny_models["classifier"], RuntimeOptions(providers=(missing, "cpu"), threads=1))
    assert rt.provider == CPU
    (line,) = warnings_of(caplog)
    assert missing in line and "not in this onnxruntime build" in line
    assert rt.run([np.ones((1, 3, 8, 8), np.float32)])[0].shape == (1, 3)


class FailingFirst:
    """A session factory whose sessions fail while ``failing`` is among the providers given."""

    def __init__(self, failing: str) -> None:
        self.failing = failing
        self.calls: list[list[str]] = []
        self.options: list[list[tuple[str, dict[str, Any]]]] = []

    def __call__(self, path: str, sess_options: Any, providers: list[tuple[str, dict[str, Any]]]) -> Any:
        names = [n for n, _ in providers]
        self.calls.append(names)
        self.options.append(providers)
        if self.failing in names:
            raise RuntimeError(f"{self.failing}: no device found\nsecond line of the error")
        return ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])


def test_a_provider_whose_session_fails_is_dropped_with_one_log_line(
    tiny_models: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TENSORRT, CUDA, CPU])
    factory = FailingFirst(TENSORRT)
    opts = RuntimeOptions(providers=("tensorrt", "cpu"), cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        rt = OnnxRuntime(tiny_models["classifier"], opts, session_factory=factory)
    assert factory.calls == [[TENSORRT, CPU], [CPU]]
    (line,) = warnings_of(caplog)
    assert "execution provider TensorrtExecutionProvider failed" in line
    assert "RuntimeError: TensorrtExecutionProvider: no device found" in line and "second line" not in line
    assert rt.provider == CPU
    trt_opts = factory.options[0][0][1]
    cache = Path(trt_opts["trt_engine_cache_path"])
    assert cache.is_dir() and cache.parent == tmp_path / "cache" / "trt"
    assert cache.name.startswith(hashlib.sha256(tiny_models["classifier"].read_bytes()).hexdigest()[:16])
    assert rt.run([np.ones((1, 3, 8, 8), np.float32)])[0].shape == (1, 3)


def test_xnnpack_takes_the_threads_and_the_session_pool_stops_spinning(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [XNNPACK, CPU])
    factory = FailingFirst(XNNPACK)  # this build has no XNNPACK: the session falls back to CPU
    seen: list[Any] = []

    def recording(path: str, sess_options: Any, providers: list[tuple[str, dict[str, Any]]]) -> Any:
        seen.append((sess_options.intra_op_num_threads, _spinning(sess_options)))
        return factory(path, sess_options, providers)

    rt = OnnxRuntime(
        tiny_models["classifier"],
        RuntimeOptions(providers=("xnnpack",), threads=4),
        session_factory=recording,
    )
    assert factory.options[0][0] == (XNNPACK, {"intra_op_num_threads": 4})
    assert seen == [(1, "0"), (4, "")]  # XNNPACK's own pool; on CPU alone the session gets the threads
    assert rt.provider == CPU


def _spinning(so: Any) -> str:
    try:
        return str(so.get_session_config_entry("session.intra_op.allow_spinning"))
    except RuntimeError:  # onnxruntime raises it when the entry is not set
        return ""


def test_a_corrupt_model_is_not_blamed_on_the_provider(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    calls: list[list[str]] = []

    def factory(path: str, sess_options: Any, providers: list[tuple[str, dict[str, Any]]]) -> Any:
        calls.append([n for n, _ in providers])
        return ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])

    with caplog.at_level(logging.WARNING), pytest.raises(BundleError, match="cannot load this model"):
        OnnxRuntime(bad, RuntimeOptions(providers=("cuda",)), session_factory=factory)
    assert calls == [[CUDA, CPU]] and warnings_of(caplog) == []


def test_a_provider_onnxruntime_drops_silently_is_logged(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])

    def factory(path: str, sess_options: Any, providers: list[tuple[str, dict[str, Any]]]) -> Any:
        return ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])  # as with no GPU

    with caplog.at_level(logging.WARNING):
        rt = OnnxRuntime(
            tiny_models["classifier"], RuntimeOptions(providers=("cuda",)), session_factory=factory
        )
    (line,) = warnings_of(caplog)
    assert "dropped execution provider(s) CUDAExecutionProvider" in line and rt.provider == CPU


# -- LiteRT ----------------------------------------------------------------------------------


def test_litert_options_from_the_provider_list(caplog: pytest.LogCaptureFixture) -> None:
    assert litert_options(provider_specs(["cpu"]), True, 2) == (True, 2)
    assert litert_options(provider_specs(["cpu"]), False, None) == (False, None)
    xnn = provider_specs([{"name": "xnnpack", "options": {"num_threads": 3}}])
    assert litert_options(xnn, False, 1) == (True, 3)
    with caplog.at_level(logging.WARNING):
        assert litert_options(provider_specs(["cuda", "cpu"]), True, None) == (True, None)
    assert len(warnings_of(caplog)) == 1
    with pytest.raises(ConfigError, match="'trt_fp16_enable' of xnnpack is not a LiteRT option"):
        litert_options(provider_specs([{"name": "xnnpack", "options": {"trt_fp16_enable": True}}]), True, 1)


def test_litert_blazeface_with_and_without_xnnpack(zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model("blazeface")
    x = np.random.default_rng(3).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    xnnpack = provider_specs([{"name": "xnnpack", "options": {"num_threads": 1}}])
    on = load_runtime(path, RuntimeOptions(providers=xnnpack, xnnpack=False))
    off = load_runtime(path, RuntimeOptions(providers=("cpu",), xnnpack=False, threads=1))
    assert on.provider == "xnnpack" and off.provider == "builtin"
    for p, q in zip(on.run([x]), off.run([x]), strict=True):
        np.testing.assert_allclose(np.asarray(p, np.float64), np.asarray(q, np.float64), atol=1e-3)

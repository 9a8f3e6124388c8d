"""OnnxRuntime and LiteRtRuntime on tiny models and on the real ones; bad model files."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference.errors import BundleError, ConfigError
from inference.runtime import Runtime, RuntimeOptions, load_runtime


def test_onnx_tiny_classifier_runs_and_reports_tensors(tiny_models: dict[str, Path]) -> None:
    rt = load_runtime(tiny_models["classifier"], RuntimeOptions(threads=1, inter_op_threads=1))
    assert isinstance(rt, Runtime) and rt.kind == "onnx" and rt.version.startswith("onnxruntime ")
    assert [(t.name, t.shape, t.dtype) for t in rt.inputs] == [("image", (1, 3, 8, 8), np.dtype(np.float32))]
    assert [(t.name, t.shape) for t in rt.outputs] == [("probs", (1, 3))]
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 2] = 5.0
    (probs,) = rt.run([x])
    assert probs.shape == (1, 3) and int(np.argmax(probs)) == 2 and probs.sum() == pytest.approx(1.0)
    rt.close()


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_onnx_graph_optimisation_levels(tiny_models: dict[str, Path], level: str) -> None:
    rt = load_runtime(tiny_models["classifier"], RuntimeOptions(graph_optimization=level))
    assert rt.run([np.ones((1, 3, 8, 8), np.float32)])[0].shape == (1, 3)


def test_onnx_bad_optimisation_level_is_config_error(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="graph_optimization"):
        load_runtime(tiny_models["classifier"], RuntimeOptions(graph_optimization="max"))


def test_onnx_missing_provider_falls_back_to_cpu_with_a_log_line(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        rt = load_runtime(tiny_models["classifier"], RuntimeOptions(providers=("NoSuchExecutionProvider",)))
    assert rt.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    assert rt.provider == "CPUExecutionProvider"
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "NoSuchExecutionProvider is not in this onnxruntime build" in line
    assert rt.run([np.ones((1, 3, 8, 8), np.float32)])[0].shape == (1, 3)


def test_onnx_dynamic_dims_are_none_and_any_size_runs(tiny_models: dict[str, Path]) -> None:
    rt = load_runtime(tiny_models["dynamic"])
    assert rt.inputs[0].shape == (None, 3, None, None) and rt.inputs[0].is_dynamic
    assert rt.outputs[0].shape == (None, 3)
    for shape in [(1, 3, 16, 24), (2, 3, 7, 5)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        (m,) = rt.run([x])
        np.testing.assert_allclose(np.asarray(m, np.float64), x.mean(axis=(2, 3)), rtol=1e-5)


def test_onnx_quantised_io_reports_quant_params(tiny_models: dict[str, Path]) -> None:
    rt = load_runtime(tiny_models["quant_u8"])
    (i,), (o,) = rt.inputs, rt.outputs
    assert i.dtype == np.uint8 and o.dtype == np.uint8
    assert i.quant is not None and i.quant[0] == pytest.approx(0.02) and i.quant[1] == 3
    assert o.quant is not None and o.quant[0] == pytest.approx(0.01) and o.quant[1] == 5
    x = np.full((1, 8, 8, 3), 53, np.uint8)  # (53 - 3) * 0.02 = 1.0 -> q = 1.0 / 0.01 + 5 = 105
    assert rt.run([x])[0].tolist() == [[105, 105, 105]]
    rt8 = load_runtime(tiny_models["int8_io"])
    assert rt8.inputs[0].quant is not None and rt8.inputs[0].quant[1] == -4
    assert rt8.outputs[0].dtype == np.int8


def test_onnx_wrong_feed_is_bundle_error(tiny_models: dict[str, Path]) -> None:
    rt = load_runtime(tiny_models["classifier"])
    with pytest.raises(BundleError, match="inference failed"):
        rt.run([np.ones((1, 3, 4, 4), np.float32)])


def _bad_files(tmp_path: Path, suffix: str, good: bytes) -> dict[str, Path]:
    files = {
        "garbage": b"this is not a model at all" * 10,
        "truncated": good[: len(good) // 2],
        "zeros": bytes(4096),
    }
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name}{suffix}"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("case", ["garbage", "truncated", "zeros"])
def test_onnx_corrupt_bytes_are_bundle_errors_naming_the_file(
    tmp_path: Path, tiny_models: dict[str, Path], case: str
) -> None:
    path = _bad_files(tmp_path, ".onnx", tiny_models["classifier"].read_bytes())[case]
    with pytest.raises(BundleError) as err:
        load_runtime(path)
    assert str(path) in str(err.value) and "rebuild it or fetch it again" in str(err.value)


def test_missing_or_unreadable_model_files(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_runtime(tmp_path / "nope.onnx")
    with pytest.raises(BundleError, match="does not exist"):
        load_runtime(tmp_path)  # a folder is not a model file
    with pytest.raises(BundleError, match="cannot tell the model format"):
        (tmp_path / "model.bin").write_bytes(tiny_models["classifier"].read_bytes())
        load_runtime(tmp_path / "model.bin")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything
        p = tmp_path / "locked.onnx"
        p.write_bytes(b"x")
        p.chmod(0)
        with pytest.raises(BundleError, match=str(p)):
            load_runtime(p)


# -- LiteRT ------------------------------------------------------------------------------


def test_litert_blazeface_tensors_and_run(zoo_model: Callable[[str], Path]) -> None:
    rt = load_runtime(zoo_model("blazeface"), RuntimeOptions(threads=2))
    assert rt.kind == "tflite" and isinstance(rt, Runtime)
    assert [(t.name, t.shape, t.dtype, t.quant) for t in rt.inputs] == [
        ("input", (1, 128, 128, 3), np.dtype(np.float32), None)
    ]
    assert [t.shape for t in rt.outputs] == [(1, 896, 16), (1, 896, 1)]
    x = np.zeros((1, 128, 128, 3), np.float32)
    a = rt.run([x])
    a[0][...] = 123.0  # outputs are copies: changing them changes nothing inside
    b = rt.run([x])
    assert not np.array_equal(a[0], b[0]) and np.isfinite(b[0]).all()
    rt.close()


def test_litert_without_xnnpack_gives_the_same_outputs(zoo_model: Callable[[str], Path]) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    with_x = load_runtime(zoo_model("blazeface"), RuntimeOptions(threads=1)).run([x])
    without = load_runtime(zoo_model("blazeface"), RuntimeOptions(threads=1, xnnpack=False)).run([x])
    for p, q in zip(with_x, without, strict=True):
        np.testing.assert_allclose(np.asarray(p, np.float64), np.asarray(q, np.float64), atol=1e-3)


def test_litert_wrong_feed_is_bundle_error(zoo_model: Callable[[str], Path]) -> None:
    rt = load_runtime(zoo_model("blazeface"))
    with pytest.raises(BundleError):
        rt.run([np.zeros((1, 64, 64, 5), np.float32)])


@pytest.mark.parametrize("case", ["garbage", "truncated", "zeros"])
def test_litert_corrupt_bytes_are_bundle_errors(
    tmp_path: Path, zoo_model: Callable[[str], Path], case: str
) -> None:
    path = _bad_files(tmp_path, ".tflite", zoo_model("blazeface").read_bytes())[case]
    with pytest.raises(BundleError) as err:
        load_runtime(path)
    assert str(path) in str(err.value)


def test_litert_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_runtime(tmp_path / "nope.tflite")


def test_litert_not_installed_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, zoo_model: Callable[[str], Path]
) -> None:
    path = zoo_model("blazeface")
    for mod in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
    ):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'edge-agent\[tflite\]'"):
        load_runtime(path)


# -- real ONNX models ----------------------------------------------------------------------


def test_onnx_ppocr_det_dynamic_hw(zoo_model: Callable[[str], Path]) -> None:
    rt = load_runtime(zoo_model("ppocr-det"), RuntimeOptions(threads=2))
    assert rt.inputs[0].shape == (None, 3, None, None)
    (m,) = rt.run([np.zeros((1, 3, 64, 96), np.float32)])
    assert m.shape == (1, 1, 64, 96) and float(m.max()) < 0.3  # a blank image has no text


def test_onnx_ppocr_cls(zoo_model: Callable[[str], Path]) -> None:
    rt = load_runtime(zoo_model("ppocr-cls"))
    assert rt.outputs[0].shape == (None, 2)
    (p,) = rt.run([np.zeros((1, 3, 48, 192), np.float32)])
    assert p.shape == (1, 2) and p.sum() == pytest.approx(1.0, abs=1e-4)


# -- tiny .tflite models: quantised and dynamic --------------------------------------------------


def test_litert_quantised_tensors_report_scale_and_zero_point(tiny_tflite: dict[str, Path]) -> None:
    rt = load_runtime(tiny_tflite["uint8"])
    (i,), (o,) = rt.inputs, rt.outputs
    assert (
        i.dtype == np.uint8 and i.quant is not None and i.quant[0] == pytest.approx(0.02) and i.quant[1] == 3
    )
    assert (
        o.dtype == np.uint8 and o.quant is not None and o.quant[0] == pytest.approx(0.01) and o.quant[1] == 5
    )
    assert rt.run([np.full((1, 8, 8, 3), 53, np.uint8)])[0].tolist() == [[105, 105, 105]]
    rt8 = load_runtime(tiny_tflite["int8"])
    q8 = rt8.inputs[0].quant
    assert rt8.inputs[0].dtype == np.int8 and q8 is not None and q8[0] == pytest.approx(0.05) and q8[1] == -4
    f = load_runtime(tiny_tflite["float"])
    assert f.inputs[0].quant is None and f.outputs[0].quant is None


@pytest.mark.parametrize("name", ["float_dynamic", "uint8_dynamic"])
def test_litert_dynamic_dims_resize_on_a_new_feed_shape(tiny_tflite: dict[str, Path], name: str) -> None:
    rt = load_runtime(tiny_tflite[name])
    assert rt.inputs[0].shape == (1, None, None, 3) and rt.inputs[0].is_dynamic
    dtype = rt.inputs[0].dtype
    for h, w in [(8, 8), (16, 4), (5, 7), (16, 4)]:
        x = np.random.default_rng(h * w).integers(0, 200, (1, h, w, 3)).astype(dtype)
        (m,) = rt.run([x])
        if dtype == np.float32:
            np.testing.assert_allclose(np.asarray(m, np.float64), x.mean(axis=(1, 2)), rtol=1e-5)
        else:
            want = np.clip(np.rint(((x.astype(np.float64) - 3) * 0.02).mean(axis=(1, 2)) / 0.01 + 5), 0, 255)
            assert np.abs(np.asarray(m, np.int32) - want).max() <= 1

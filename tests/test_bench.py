"""edge-agent bench: the measuring core, the CLI, and agreement with plain engine loops."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from inference import bench  # noqa: E402
from inference.errors import BundleError, ConfigError  # noqa: E402
from inference.runtime import TensorInfo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------
# tiny models built with onnx.helper


def _save(graph: Any, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, c: int = 16, hw: int | str = 64, batch: int | str = 1) -> Path:
    """x [batch, c, hw, hw] float -> Conv 3x3 -> Relu; str dims are dynamic."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    h2 = hw if isinstance(hw, int) else f"{hw}2"
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, hw, h2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, c, hw, h2])],
        [w],
    )
    return _save(graph, path)


def quant_model(path: Path, elem: int = TensorProto.UINT8, c: int = 4, hw: int = 32) -> Path:
    """Quantised in and out: x (u)int8 -> DequantizeLinear -> Conv -> QuantizeLinear -> (u)int8."""
    npdt = np.uint8 if elem == TensorProto.UINT8 else np.int8
    zp_in = 128 if npdt is np.uint8 else 0
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_in"),
        numpy_helper.from_array(np.array(zp_in, npdt), "z_in"),
        numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s_out"),
        numpy_helper.from_array(np.array(zp_in, npdt), "z_out"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["xf"]),
        helper.make_node("Conv", ["xf", "w"], ["yf"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["yf", "s_out", "z_out"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "quant",
        [helper.make_tensor_value_info("x", elem, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", elem, [1, c, hw, hw])],
        inits,
    )
    return _save(graph, path)


def cast_model(path: Path) -> Path:
    """uint8 NHWC image in -> Cast float -> Mul -> Cast uint8 out (an integer I/O chain without Q/DQ)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "half"], ["yf"]),
        helper.make_node("Cast", ["yf"], ["y"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 48, 64, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 48, 64, 3])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench-models")
    return {
        "conv": conv_model(d / "conv.onnx"),
        "uint8": quant_model(d / "uint8.onnx", TensorProto.UINT8),
        "int8": quant_model(d / "int8.onnx", TensorProto.INT8),
        "cast": cast_model(d / "cast.onnx"),
        "dynamic": conv_model(d / "dynamic.onnx", c=3, hw="h", batch="n"),
    }


# ------------------------------------------------------------------------------------------
# pure helpers


def test_summarize_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    samples = rng.gamma(2.0, 1.5, size=1001)
    s = bench.summarize(samples)
    assert s["p50"] == pytest.approx(float(np.median(samples)))
    assert s["p90"] == pytest.approx(float(np.percentile(samples, 90)))
    assert s["p99"] == pytest.approx(float(np.percentile(samples, 99)))
    assert s["min"] == samples.min() and s["max"] == samples.max()
    assert s["mean"] == pytest.approx(samples.mean()) and s["std"] == pytest.approx(samples.std())
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    with pytest.raises(ValueError):
        bench.summarize([])


def test_parse_threads() -> None:
    assert bench.parse_threads("1,2,4") == [1, 2, 4]
    assert bench.parse_threads(" 2 ") == [2]
    assert bench.parse_threads("2,2,1") == [2, 1]
    for bad in ("", "0", "a", "1,,2", "-1", "1.5"):
        with pytest.raises(ConfigError, match="--threads"):
            bench.parse_threads(bad)


def test_parse_shapes() -> None:
    assert bench.parse_shapes(["1x3x480x640"]) == {"": (1, 3, 480, 640)}
    assert bench.parse_shapes(["images:1x3x8x8"]) == {"images": (1, 3, 8, 8)}
    for bad in ("1x0x3", "abc", "images:", "1x-3"):
        with pytest.raises(ConfigError, match="--shape"):
            bench.parse_shapes([bad])


def test_concrete_shape_fills_dynamic_dims() -> None:
    f32 = np.dtype(np.float32)
    nchw = TensorInfo("x", (None, 3, None, None), f32)
    assert bench.concrete_shape(nchw) == (1, 3, bench.DEFAULT_SPATIAL, bench.DEFAULT_SPATIAL)
    nhwc = TensorInfo("x", (1, None, None, 3), f32)
    assert bench.concrete_shape(nhwc) == (1, bench.DEFAULT_SPATIAL, bench.DEFAULT_SPATIAL, 3)
    assert bench.concrete_shape(nchw, hint=(1, 3, 480, 640)) == (1, 3, 480, 640)
    assert bench.concrete_shape(nchw, hint=(1, 1, 480, 640)) == (1, 3, 640, 640)  # hint contradicts: ignored
    assert bench.concrete_shape(nchw, override=(2, 3, 8, 16)) == (2, 3, 8, 16)
    with pytest.raises(ConfigError, match="does not fit"):
        bench.concrete_shape(nchw, override=(1, 1, 8, 8))
    assert bench.concrete_shape(TensorInfo("x", (1, 10), f32)) == (1, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int8, np.int32, np.int64, np.bool_])
def test_random_tensor_dtypes_and_ranges(dtype: type[np.generic]) -> None:
    info = TensorInfo("x", (1, 64, 64), np.dtype(dtype))
    a = bench.random_tensor(info, (1, 64, 64), np.random.default_rng(0))
    assert a.dtype == np.dtype(dtype) and a.shape == (1, 64, 64)
    if np.dtype(dtype).kind == "f":
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    elif np.dtype(dtype).itemsize == 1 and np.dtype(dtype).kind in "iu":
        lo, hi = (0, 255) if np.dtype(dtype).kind == "u" else (-128, 127)
        assert int(a.min()) == lo and int(a.max()) == hi  # 4096 draws hit both ends of 256 values


def test_machine_info_and_rss_come_from_the_os() -> None:
    m = bench.machine_info()
    for key in ("cpu", "arch", "cores", "os", "python", "numpy"):
        assert m[key], key
    assert m["cores"] == os.cpu_count()
    assert bench.machine_slug(m).endswith(f"-{m['cores']}c")
    if Path("/proc/self/status").exists():
        status = Path("/proc/self/status").read_text()
        hwm_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        assert bench.peak_rss_mb() >= hwm_kb / 1024.0 - 1.0
        before = bench.rss_mb()
        block = np.ones(64 * 1024 * 1024 // 8)  # touch 64 MiB
        assert bench.rss_mb() - before > 48
        assert bench.peak_rss_mb() >= bench.rss_mb() - 0.5
        del block


# ------------------------------------------------------------------------------------------
# run_bench in this process


def _check_result(r: bench.BenchResult, runs: int) -> None:
    d = r.to_json()
    for key in ("model", "runtime", "runtime_version", "threads", "runs", "init_ms", "first_ms", "latency_ms",
                "fps", "peak_rss_mb", "rss_model_mb"):  # fmt: skip
        assert key in d, key
    assert set(d["latency_ms"]) == {"mean", "std", "min", "p50", "p90", "p99", "max"}
    assert r.runs == runs and len(r.samples_ms) == runs
    assert r.init_ms > 0 and r.first_ms > 0 and r.fps > 0 and r.peak_rss_mb > 10
    lat = r.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # fps counts the loop's wall time, so it cannot beat the mean latency
    assert r.fps <= 1000.0 / lat["mean"] * 1.001
    json.dumps(d)


@pytest.mark.parametrize("name", ["conv", "uint8", "int8", "cast"])
def test_run_bench_float_and_integer_models(models: dict[str, Path], name: str) -> None:
    r = bench.run_bench(models[name], "auto", threads=1, runs=20, warmup=2)
    _check_result(r, 20)
    assert r.runtime == "onnx" and r.model == name and r.input == "random"
    assert "onnxruntime" in r.runtime_version


def test_integer_models_get_integer_inputs(models: dict[str, Path]) -> None:
    from inference.runtime import load_runtime

    target = bench.resolve_target(models["int8"])
    rt = load_runtime(target.model_path)
    try:
        assert rt.inputs[0].dtype == np.int8 and rt.outputs[0].dtype == np.int8
        (feed,) = bench.prepare_inputs(target, rt, "random")[0]
        assert feed.dtype == np.int8 and int(feed.min()) < 0 < int(feed.max())
        (out,) = rt.run([feed])
        assert out.dtype == np.int8
    finally:
        rt.close()


def test_run_bench_dynamic_dims(models: dict[str, Path]) -> None:
    r = bench.run_bench(models["dynamic"], threads=1, runs=5, warmup=1)
    assert r.input_shapes == [[1, 3, bench.DEFAULT_SPATIAL, bench.DEFAULT_SPATIAL]]
    r = bench.run_bench(models["dynamic"], threads=1, runs=5, warmup=1, shapes={"": (2, 3, 48, 80)})
    assert r.input_shapes == [[2, 3, 48, 80]]
    r = bench.run_bench(models["dynamic"], threads=1, runs=5, warmup=1, shapes={"x": (1, 3, 32, 32)})
    assert r.input_shapes == [[1, 3, 32, 32]]


def test_run_bench_duration(models: dict[str, Path]) -> None:
    r = bench.run_bench(models["conv"], threads=1, runs=1, warmup=0, duration=0.3)
    assert r.runs > 1 and len(r.samples_ms) == r.runs
    assert sum(r.samples_ms) / 1000.0 <= 0.3 + r.latency_ms["max"] / 1000.0 + 0.05


def test_timed_loop_grows_its_buffer_and_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    samples, wall = bench.timed_loop(
        lambda f: None, [[np.zeros(1)]], runs=1, duration_s=0.05, progress=lambda d, t: seen.append((d, t))
    )
    assert samples.size > 1024  # beyond the first preallocated chunk
    assert seen[-1] == (samples.size, 0) and wall >= 0.05
    seen.clear()
    samples, _ = bench.timed_loop(
        lambda f: None, [[np.zeros(1)]], runs=7, progress=lambda d, t: seen.append((d, t))
    )
    assert samples.size == 7 and seen[-1] == (7, 7)


def test_bad_inputs_raise_clear_errors(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such model file"):
        bench.resolve_target(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(BundleError, match=r"junk\.onnx"):
        bench.run_bench(junk, runs=1, warmup=0)
    with pytest.raises(ConfigError, match="tflite runtime cannot run it"):
        bench.run_bench(models["conv"], "tflite", runs=1)
    with pytest.raises(ConfigError, match="golden"):
        bench.run_bench(models["conv"], input_mode="golden", runs=1)
    with pytest.raises(ConfigError, match="folder"):
        bench.run_bench(models["conv"], input_mode=str(tmp_path / "nope"), runs=1)


# ------------------------------------------------------------------------------------------
# one configuration per process


def test_bench_isolated_reports_os_memory_figures(models: dict[str, Path]) -> None:
    r = bench.bench_isolated(str(models["conv"]), "onnx", 1, runs=10, warmup=1, samples=True)
    _check_result(r, 10)
    assert r.isolated
    # a child python with numpy and onnxruntime loaded is well above 30 MB and well below 2 GB
    assert 30 < r.peak_rss_mb < 2048
    assert 0 <= r.rss_model_mb < r.peak_rss_mb


def test_bench_isolated_passes_errors_through(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"nope")
    with pytest.raises(BundleError, match=r"junk\.onnx"):
        bench.bench_isolated(str(junk), "onnx", 1, runs=1, warmup=0)


# ------------------------------------------------------------------------------------------
# acceptance: bench p50 agrees with a plain session.run loop


def test_bench_p50_agrees_with_a_plain_onnx_loop(models: dict[str, Path]) -> None:
    from benchmarks.common import plain_onnx, summarize

    path = models["conv"]
    feed = bench.random_tensor(TensorInfo("x", (1, 16, 64, 64), np.dtype(np.float32)), (1, 16, 64, 64),
                               np.random.default_rng(0))  # fmt: skip
    ratios = []
    for _ in range(3):  # interleaved: the machine is shared and noisy
        b = bench.bench_isolated(str(path), "onnx", 1, runs=200, warmup=20)
        plain, _wall = plain_onnx(path, 1, feed, runs=200, warmup=20)
        ratios.append(b.latency_ms["p50"] / summarize(plain)["p50"])
    assert 0.75 < statistics.median(ratios) < 1.25, ratios


# ------------------------------------------------------------------------------------------
# the CLI


def _parser() -> argparse.ArgumentParser:
    from agent import cli_bench

    ap = argparse.ArgumentParser(prog="edge-agent")
    sub = ap.add_subparsers(dest="command")
    cli_bench.register(sub)
    return ap


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from agent import cli

    try:
        code = cli.main(["bench", *argv])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return int(code), out, err


def test_cli_json_document(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "r.json"
    code, out, err = _cli([str(models["uint8"]), "--runs", "5", "--warmup", "1", "--threads", "1",
                           "--json", "--out", str(out_file)], capsys)  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) >= {"results", "machine"}
    (r,) = doc["results"]
    assert r["model"] == "uint8" and r["runtime"] == "onnx" and r["threads"] == 1 and r["runs"] == 5
    assert r["peak_rss_mb"] > 0 and "rss_model_mb" in r
    assert r["provider"] == "CPUExecutionProvider" and r["providers"] == ["CPUExecutionProvider"]
    assert json.loads(out_file.read_text()) == doc


def test_cli_providers_fall_back_and_each_result_says_which_ran(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """CUDA is not in this CPU build: the measuring process logs it and CPU runs the model."""
    code, out, err = _cli([str(models["conv"]), "--runs", "2", "--warmup", "0", "--providers", "cuda,cpu",
                           "--json"], capsys)  # fmt: skip
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    assert r["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert r["provider"] == "CPUExecutionProvider"
    code, out, err = _cli([str(models["conv"]), "--runs", "2", "--warmup", "0", "--providers", "gpu"], capsys)
    assert code == 2 and "'gpu' is not an execution provider" in err


def test_cli_table(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli([str(models["cast"]), "--runs", "3", "--warmup", "0"], capsys)
    assert code == 0, err
    assert "p50" in out and "peak MB" in out and "machine:" in out and "cast" in out
    assert "provider" in out and "CPUExecutionProvider" in out


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["{missing}"], 1, "no such model file"),
        (["{junk}"], 1, "junk.onnx"),
        (["{conv}", "--threads", "0"], 2, "--threads"),
        (["{conv}", "--threads", "two"], 2, "--threads"),
        (["{conv}", "--runs", "0"], 2, "--runs"),
        (["{conv}", "--runtime", "tensorrt"], 2, "unknown runtime"),
        ([], 2, "no model given"),
    ],
)
def test_cli_bad_input(
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    words: str,
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    names = {"missing": str(tmp_path / "missing.onnx"), "junk": str(junk), "conv": str(models["conv"])}
    got, out, err = _cli([a.format(**names) for a in argv], capsys)
    assert got == code
    assert words in err and "Traceback" not in err
    assert out == ""


def test_worker_module_runs_standalone(models: dict[str, Path]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "inference.bench", str(models["conv"]), "--runs", "3", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["runs"] == 3


# ------------------------------------------------------------------------------------------
# bundles: golden inputs, image folders, manifest shapes for dynamic dims


def nhwc_twin(path: Path, c: int = 3, hw: int = 64) -> Path:
    """The conv_model(c, hw) graph behind NHWC input and output (Transpose in and out)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xc", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["zc"]),
        helper.make_node("Transpose", ["zc"], ["z"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, hw, hw, c])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, hw, hw, c])],
        [w],
    )
    return _save(graph, path)


def _images(n: int = 3, hw: tuple[int, int] = (48, 64)) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from inference.bundle_builder import create_bundle

    d = tmp_path_factory.mktemp("bench-bundles")
    float_in = {"layout": "NCHW", "color": "RGB", "scale": 1 / 255, "mean": 0.0, "std": 1.0}
    out = {}
    conv3 = conv_model(d / "conv3.onnx", c=3)
    create_bundle(conv3, d / "conv3", name="conv3", version=1, input_spec=float_in, golden_images=_images())
    out["conv3"] = d / "conv3"
    q = quant_model(d / "q3.onnx", TensorProto.UINT8, c=3, hw=32)
    create_bundle(q, d / "q3", name="q3", version=2, golden_images=_images(2))
    out["q3"] = d / "q3"
    dyn = conv_model(d / "dyn.onnx", c=3, hw="h", batch="n")
    create_bundle(dyn, d / "dyn", name="dyn", version=1, input_spec={**float_in, "shape": [1, 3, 48, 80]})
    out["dyn"] = d / "dyn"
    folder = d / "images"
    folder.mkdir()
    import cv2

    for i, img in enumerate(_images(3, (60, 90))):
        cv2.imwrite(str(folder / f"{i}.png"), img)
    out["images"] = folder
    out["conv3_file"] = conv3
    out["nhwc_file"] = nhwc_twin(d / "nhwc.onnx")
    out["q3_file"] = q
    return out


def test_bundle_golden_inputs(bundles: dict[str, Path]) -> None:
    r = bench.run_bench(bundles["conv3"], input_mode="golden", runs=6, warmup=1)
    assert r.model == "conv3" and r.input == "golden" and r.input_shapes == [[1, 3, 64, 64]]
    golden = np.load(bundles["conv3"] / "golden" / "0_in.npy")
    target = bench.resolve_target(bundles["conv3"])
    from inference.runtime import load_runtime

    rt = load_runtime(target.model_path)
    try:
        feeds = bench.prepare_inputs(target, rt, "golden")
    finally:
        rt.close()
    assert len(feeds) == 3 and np.array_equal(feeds[0][0], golden)


def test_quantised_bundle_golden_and_random(bundles: dict[str, Path]) -> None:
    r = bench.run_bench(bundles["q3"], input_mode="golden", runs=4, warmup=0)
    assert r.input_shapes == [[1, 3, 32, 32]]
    r = bench.run_bench(bundles["q3"], runs=4, warmup=0)
    assert r.model == "q3" and r.fps > 0


def test_image_folder_inputs_use_the_models_preprocessor(bundles: dict[str, Path]) -> None:
    r = bench.run_bench(bundles["conv3"], input_mode=str(bundles["images"]), runs=6, warmup=1)
    assert r.input == "dir" and r.input_shapes == [[1, 3, 64, 64]]
    # a bare file: the input spec comes from the model itself
    r = bench.run_bench(bundles["q3_file"], input_mode=str(bundles["images"]), runs=3, warmup=0)
    assert r.input_shapes == [[1, 3, 32, 32]]


def test_dynamic_bundle_takes_the_manifest_shape(bundles: dict[str, Path]) -> None:
    r = bench.run_bench(bundles["dyn"], runs=3, warmup=0)
    assert r.input_shapes == [[1, 3, 48, 80]]


def test_cli_on_a_bundle_with_golden_inputs(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(
        [str(bundles["q3"]), "--input", "golden", "--runs", "4", "--warmup", "1", "--json"], capsys
    )
    assert code == 0, err
    (r,) = json.loads(out)["results"]
    assert r["model"] == "q3" and r["input"] == "golden" and r["isolated"] is True


def test_golden_needs_a_bundle(models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli([str(models["conv"]), "--input", "golden", "--runs", "1"], capsys)
    assert code == 2 and "golden" in err


# ------------------------------------------------------------------------------------------
# --compare


def test_compare_same_model_in_two_layouts(bundles: dict[str, Path]) -> None:
    from inference.bench_compare import compare

    doc = compare(bundles["conv3_file"], bundles["nhwc_file"], runs=3, warmup=0)
    agree = doc["agreement"]
    assert agree["inputs"] == 4 and agree["input"] == "random"
    (row,) = agree["outputs"]
    assert (
        row["note"] == "B transposed"
        and row["shape_a"] == [1, 3, 64, 64]
        and row["shape_b"] == [1, 64, 64, 3]
    )
    assert row["max_abs_diff"] < 1e-4 < row["max_abs_a"]
    assert doc["a"]["results"][0]["runs"] == 3 and doc["b"]["results"][0]["model"] == "nhwc"


def test_compare_float_with_quantised(bundles: dict[str, Path], tmp_path: Path) -> None:
    from inference.bench_compare import compare

    rng = np.random.default_rng(2)  # quant_model's weights, in a float model
    w = numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.1).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
        [w],
    )
    f = _save(graph, tmp_path / "float.onnx")
    doc = compare(f, bundles["q3_file"], runs=2, warmup=0)
    (row,) = doc["agreement"]["outputs"]
    # input quantised at 0.02, output at 0.05: small but non-zero differences
    assert 0 < row["max_abs_diff"] < 0.2 and row["max_abs_a"] > 0.2


def test_compare_on_images_and_identical_models(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(
        ["--compare", str(bundles["conv3"]), str(bundles["conv3_file"]), "--input", str(bundles["images"]),
         "--runs", "2", "--warmup", "0", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["agreement"]["inputs"] == 3 and doc["agreement"]["outputs"][0]["max_abs_diff"] == 0.0
    assert set(doc) >= {"a", "b", "agreement", "machine"}
    code, out, _ = _cli(["--compare", str(bundles["conv3"]), str(bundles["conv3"]), "--runs", "2"], capsys)
    assert code == 0 and "max abs diff 0" in out


def test_compare_refuses_unrelated_inputs(
    bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(
        ["--compare", str(bundles["conv3_file"]), str(bundles["q3_file"]), "--runs", "1"], capsys
    )
    assert code == 2 and "--input DIR" in err


def test_box_matching() -> None:
    from inference.bench_compare import compare_decoded, iou, match_boxes
    from inference.result import Detection, Result

    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    a = Result(
        "detections",
        0.9,
        detections=[Detection("face", 0.9, (0, 0, 10, 10)), Detection("face", 0.8, (20, 20, 30, 30))],
    )
    b = Result(
        "detections",
        0.9,
        detections=[Detection("face", 0.9, (21, 20, 31, 30)), Detection("cat", 0.7, (0, 0, 10, 10))],
    )
    assert match_boxes(a, b) == [pytest.approx(90 / 110)]
    d = compare_decoded([a], [b])
    assert d["matched"] == 1 and d["matched_share"] == 0.5 and d["boxes_a"] == 2


# ------------------------------------------------------------------------------------------
# the real models: LiteRT, bundles, the pipeline


@pytest.mark.models
def test_tflite_bare_file_and_bundle(
    zoo_model: Any, zoo_bundle: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    r = bench.run_bench(zoo_model("blazeface"), runs=10, warmup=2)
    _check_result(r, 10)
    assert (
        r.runtime == "tflite"
        and "litert" in r.runtime_version.lower()
        and r.input_shapes == [[1, 128, 128, 3]]
    )
    code, out, err = _cli(
        [str(zoo_bundle("blazeface")), "--input", "golden", "--runs", "5", "--json"], capsys
    )
    assert code == 0, err
    (res,) = json.loads(out)["results"]
    assert res["model"] == "blazeface" and res["runtime"] == "tflite" and res["peak_rss_mb"] > 0
    assert res["provider"] == "xnnpack" and r.provider == "xnnpack"
    code, _, err = _cli([str(zoo_model("blazeface")), "--runtime", "onnx", "--runs", "1"], capsys)
    assert code == 2 and "onnx runtime cannot run it" in err


@pytest.mark.models
def test_bench_p50_agrees_with_a_plain_tflite_loop(zoo_model: Any) -> None:
    from benchmarks.common import plain_tflite, summarize

    path = zoo_model("blazeface")
    info = TensorInfo("input", (1, 128, 128, 3), np.dtype(np.float32))
    feed = bench.random_tensor(info, (1, 128, 128, 3), np.random.default_rng(0))
    ratios = []
    for _ in range(3):
        b = bench.bench_isolated(str(path), "tflite", 1, runs=150, warmup=15)
        plain, _wall = plain_tflite(path, 1, feed, runs=150, warmup=15)
        ratios.append(b.latency_ms["p50"] / summarize(plain)["p50"])
    assert 0.75 < statistics.median(ratios) < 1.25, ratios


@pytest.mark.models
def test_zoo_name_and_compare_detector_with_itself(
    zoo_bundle: Any, zoo_image: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    zoo_bundle("blazeface")
    cv2.imwrite(str(tmp_path / "astronaut.png"), zoo_image("astronaut.png"))
    code, out, err = _cli(
        [
            "--compare",
            "blazeface",
            str(zoo_bundle("blazeface")),
            "--input",
            str(tmp_path),
            "--runs",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    dec = json.loads(out)["agreement"]["decoded"]
    assert dec["boxes_a"] >= 1 and dec["matched_share"] == 1.0 and dec["mean_iou"] == 1.0


@pytest.mark.models
def test_pipeline_mode(zoo_bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(
        [str(zoo_bundle("blazeface")), "--runs", "5", "--pipeline", "--source", "synthetic:320x240@30",
         "--frames", "40", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    pipe = json.loads(out)["pipeline"]
    assert pipe["frames"] == 40 and pipe["errors"] == 0 and pipe["dropped"] == 0
    for key in ("fps", "bare_fps", "decode_fps", "infer_fps", "ratio", "ratio_vs_min"):
        assert pipe[key] > 0, key
    assert pipe["ratio"] == pytest.approx(pipe["fps"] / pipe["bare_fps"])
    assert set(pipe["latency_ms"]) >= {"p50", "p99"}
    code, out, err = _cli(
        [str(zoo_bundle("blazeface")), "--runs", "3", "--pipeline", "--frames", "20"], capsys
    )
    assert code == 0 and "pipeline ÷ bare runtime" in out


def test_pipeline_mode_bad_source(bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(
        [str(bundles["conv3"]), "--runs", "2", "--pipeline", "--source", "nowhere.mp4"], capsys
    )
    assert code == 1 and "nowhere.mp4" in err and out == ""


# ------------------------------------------------------------------------------------------
# the benchmark runner


def test_runner_writes_json_markdown_plots_and_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import benchmarks.__main__ as runner

    ok = types.ModuleType("fake_ok")
    ok.run = lambda quick: {  # type: ignore[attr-defined]
        "targets": [{"what": "a ratio", "value": 0.991, "target": "≥ 0.97", "ok": True}],
        "latency_ms": {"fast": [1.0, 1.1, 1.2, 0.9], "slow": [5.0, 6.0, 5.5]},
        "notes": ["a note"],
        "quick_was": quick,
    }
    bad = types.ModuleType("fake_bad")

    def boom(quick: bool) -> dict[str, Any]:
        raise RuntimeError("it broke")

    bad.run = boom  # type: ignore[attr-defined]
    monkeypatch.setattr(runner, "discover", lambda: {"ok": ok, "bad": bad})
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nhand-written\n\n" + runner.BEGIN + "\nold\n" + runner.END + "\ntail\n")
    monkeypatch.setattr(runner, "DOCS", docs)
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path / "results")
    code = runner.main(["--out", str(tmp_path / "results")])
    assert code == 1  # one benchmark failed; the other still ran
    (js,) = (tmp_path / "results").glob("*.json")
    doc = json.loads(js.read_text())
    assert doc["benchmarks"]["ok"]["quick_was"] is False and doc["quick"] is False
    assert doc["benchmarks"]["ok"]["latency_ms"]["fast"]["p50"] == pytest.approx(1.05)
    assert "it broke" in doc["benchmarks"]["bad"]["error"]
    assert doc["machine"]["cores"] == os.cpu_count() and doc[
        "command"
    ] == "python -m benchmarks --out " + str(tmp_path / "results")
    md = js.with_suffix(".md").read_text()
    assert "| ok | a ratio | 0.991 | ≥ 0.97 | ✓ |" in md and "failed: RuntimeError: it broke" in md
    (png,) = (tmp_path / "results").glob("*-ok.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png.name})" in md
    text = docs.read_text()
    assert "hand-written" in text and text.endswith("tail\n") and "old" not in text
    assert f"](../benchmarks/results/{png.name})" in text and "a ratio" in text


def test_runner_lists_real_benchmarks_and_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.__main__ as runner

    found = runner.discover()
    assert list(found)[:2] == ["pipeline", "bench_vs_plain"]
    assert all(callable(m.run) for m in found.values())
    assert runner.main(["--only", "nope"]) == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["float", "float_dynamic", "uint8", "uint8_dynamic", "int8"])
def test_tiny_tflite_models(tiny_tflite: dict[str, Path], name: str) -> None:
    shapes: dict[str, tuple[int, ...]] | None = {"": (1, 16, 24, 3)} if name.endswith("dynamic") else None
    r = bench.run_bench(tiny_tflite[name], "auto", runs=5, warmup=1, shapes=shapes)
    _check_result(r, 5)
    assert r.runtime == "tflite"
    assert r.input_shapes == ([[1, 16, 24, 3]] if shapes else [[1, 8, 8, 3]])
    if name.endswith("dynamic"):  # without --shape: batch 1, 640 x 640
        r = bench.run_bench(tiny_tflite[name], runs=2, warmup=0)
        assert r.input_shapes == [[1, bench.DEFAULT_SPATIAL, bench.DEFAULT_SPATIAL, 3]]


def test_tiny_tflite_integer_feeds_and_cli(
    tiny_tflite: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.runtime import load_runtime

    target = bench.resolve_target(tiny_tflite["int8"])
    rt = load_runtime(target.model_path)
    try:
        (feed,) = bench.prepare_inputs(target, rt, "random")[0]
        assert feed.dtype == np.int8 and rt.outputs[0].dtype == np.int8
    finally:
        rt.close()
    argv = [
        str(tiny_tflite["uint8_dynamic"]),
        "--shape",
        "1x32x32x3",
        "--runs",
        "3",
        "--threads",
        "1,2",
        "--json",
    ]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    rows = json.loads(out)["results"]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["input_shapes"] == [[1, 32, 32, 3]] for r in rows)


def test_progress_bar_and_runtime_flag_for_an_odd_suffix(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    show = bench._stderr_progress("conv onnx threads=1")
    show(15, 30)
    show(40, 0)
    err = capsys.readouterr().err
    assert "\r  conv onnx threads=1  [" + "#" * 15 + "." * 15 + "] 15/30" in err and "40 runs" in err
    odd = tmp_path / "conv.bin"
    odd.write_bytes(models["conv"].read_bytes())
    code, out, err = _cli([str(odd), "--runtime", "onnx", "--runs", "2", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["results"][0]["runtime"] == "onnx"
    code, _, err = _cli([str(odd), "--runs", "2"], capsys)
    assert code == 1 and "cannot tell the model format" in err

"""The ORT-format companion (inference/ort_format.py): ``bundle create --optimize`` writes it with its
own sha256 in the manifest, verification covers it, the ONNX runtime loads it (memory-mapped) and it
gives the .onnx model's outputs; a companion this onnxruntime cannot read or load is a warning line
and the .onnx is loaded."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from inference import ort_format
from inference.bundle import open_bundle, parse_manifest
from inference.bundle_builder import create_bundle
from inference.errors import BundleError, VerificationError
from inference.onnx_runtime import OnnxRuntime
from inference.runtime import RuntimeOptions

SIDE = 16


def _weights_model(path: Path) -> Path:
    """image [1,3,16,16] -> flatten -> MatMul 768x32 -> Relu -> MatMul 32x4 -> softmax [1,4]
    (the hot-swap benchmark's classifier, small)."""
    from benchmarks.hot_swap import classifier_model

    w1 = (np.random.default_rng(5).standard_normal((3 * SIDE * SIDE, 32)) / SIDE).astype(np.float32)
    return classifier_model(path, w1, seed=6, strength=3.0, side=SIDE)


def _images(n: int) -> list[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(n)]


def _bundle(tmp: Path, optimize: bool = True, name: str = "opt") -> Path:
    create_bundle(
        _weights_model(tmp / f"{name}-src.onnx"),
        tmp / name,
        name="cls",
        version=1,
        decoder="classification",
        labels=["a", "b", "c", "d"],
        input_spec={"scale": 1 / 255},
        golden_images=_images(2),
        optimize=optimize,
    )
    return tmp / name


def _f(a: Any) -> npt.NDArray[np.float64]:
    return np.asarray(a, np.float64)


def _usable() -> bool:
    return ort_format.unreadable({"runtime": f"onnxruntime {ort.__version__}"}, ort.__version__) is None


needs_mmap = pytest.mark.skipif(not _usable(), reason=f"onnxruntime {ort.__version__} cannot map ORT models")


def test_optimize_writes_the_companion_in_the_manifest(tmp_path: Path) -> None:
    out = _bundle(tmp_path)
    b = open_bundle(out, verify=True)
    section = b.manifest.ort
    assert section is not None and b.ort_path == out / "model.ort"
    assert section["file"] == "model.ort" and section["optimization"] == "basic"
    assert section["size"] == (out / "model.ort").stat().st_size
    assert section["runtime"] == f"onnxruntime {ort.__version__}"
    import hashlib

    assert section["sha256"] == hashlib.sha256((out / "model.ort").read_bytes()).hexdigest()
    data = (out / "manifest.json").read_bytes()
    assert parse_manifest(data, "m").to_bytes() == data  # the section round-trips (the signed bytes)
    plain = open_bundle(_bundle(tmp_path, optimize=False, name="plain"))
    assert plain.manifest.ort is None and plain.ort_path is None
    assert "ort" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())


def test_a_tampered_or_missing_companion_is_named(tmp_path: Path) -> None:
    out = _bundle(tmp_path)
    data = bytearray((out / "model.ort").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.ort").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"model\.ort: sha256"):
        open_bundle(out, verify=True)
    (out / "model.ort").write_bytes(bytes(data[:-10]))
    with pytest.raises(VerificationError, match=r"model\.ort: size"):
        open_bundle(out, verify=True)
    (out / "model.ort").unlink()
    with pytest.raises(BundleError, match=r"companion 'model\.ort' it names is missing"):
        open_bundle(out, verify=False)


@needs_mmap
def test_the_companion_loads_and_gives_the_onnx_outputs(tmp_path: Path) -> None:
    out = _bundle(tmp_path)
    b = open_bundle(out)
    opts = ort_format.runtime_options(b, None)
    assert opts.ort_model == out / "model.ort"
    from_ort = OnnxRuntime(b.model_path, opts)
    from_onnx = OnnxRuntime(b.model_path, RuntimeOptions())
    try:
        assert from_ort.source == out / "model.ort" and from_onnx.source == b.model_path
        assert [t.name for t in from_ort.inputs] == [t.name for t in from_onnx.inputs]
        assert [t.shape for t in from_ort.outputs] == [t.shape for t in from_onnx.outputs]
        x = np.random.default_rng(0).random((1, 3, SIDE, SIDE), dtype=np.float32)
        np.testing.assert_allclose(_f(from_ort.run([x])[0]), _f(from_onnx.run([x])[0]), rtol=1e-5, atol=1e-6)
        for inp, outs in b.golden_pairs():  # the golden outputs were made by the .onnx
            got = from_ort.run([np.load(inp)])[0]
            np.testing.assert_allclose(_f(got), _f(np.load(outs[0])), rtol=1e-5, atol=1e-6)
    finally:
        from_ort.close()
        from_onnx.close()


@needs_mmap
def test_load_model_uses_the_companion(tmp_path: Path) -> None:
    from inference.model import load_model

    model = load_model(_bundle(tmp_path))
    try:
        assert getattr(model.runtime, "source", None) == tmp_path / "opt" / "model.ort"
        assert model.infer(_images(1)[0]).classes
    finally:
        model.close()


def test_a_companion_that_does_not_load_falls_back_to_the_onnx(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _bundle(tmp_path)
    (out / "model.ort").write_bytes(b"not a flatbuffer at all" * 10)
    caplog.set_level(logging.WARNING)
    rt = OnnxRuntime(out / "model.onnx", RuntimeOptions(ort_model=out / "model.ort"))
    try:
        assert rt.source == out / "model.onnx"
        assert rt.run([np.zeros((1, 3, SIDE, SIDE), np.float32)])[0].shape == (1, 4)
    finally:
        rt.close()
    lines = [r.getMessage() for r in caplog.records if "companion" in r.getMessage()]
    assert len(lines) == 1 and "model.ort did not load" in lines[0] and "loading model.onnx" in lines[0]


def test_which_runtime_reads_which_companion() -> None:
    def why(wrote: str, here: str) -> str | None:
        return ort_format.unreadable({"runtime": wrote}, here)

    assert why("onnxruntime 1.32.0", "1.32.1") is None
    assert why("onnxruntime 1.20.0", "1.33.0") is None  # ORT format v5, read by later runtimes
    assert "newer" in str(why("onnxruntime 1.40.0", "1.32.0"))
    assert "does not read" in str(why("onnxruntime 1.12.1", "1.32.0"))  # ORT format v4
    assert "memory-mapped" in str(why("onnxruntime 1.20.0", "1.25.0"))  # no use_memory_mapped_ort_model
    assert ort_format.parse_runtime("onnxruntime 1.32.0") == (1, 32, 0)
    assert ort_format.parse_runtime("tflite 2.1") is None


def test_a_companion_this_runtime_cannot_read_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = _bundle(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["ort"]["runtime"] = "onnxruntime 99.0.0"
    (out / "manifest.json").write_text(json.dumps(m))
    caplog.set_level(logging.WARNING)
    opts = RuntimeOptions(threads=1)
    assert ort_format.runtime_options(open_bundle(out), opts) is opts
    assert any("not using the ORT-format companion model.ort" in r.getMessage() for r in caplog.records)


def _manifest() -> dict[str, Any]:
    return {
        "schema": 1, "name": "m", "version": 1, "format": "onnx", "file": "model.onnx", "sha256": "a" * 64,
        "size": 10, "ort": {"file": "model.ort", "sha256": "b" * 64, "size": 5,
                            "runtime": "onnxruntime 1.32.0", "optimization": "basic"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("top", "ort_fields", "match"),
    [
        ({"format": "tflite", "file": "model.tflite"}, {}, "belongs to an onnx model"),
        ({}, {"sha256": None}, "'ort' is missing sha256"),
        ({}, {"file": "model.onnx"}, r"'ort.file' is 'model.onnx'"),
        ({}, {"surprise": 1}, "unknown key 'ort.surprise'"),
        ({}, {"runtime": "tflite 2.16"}, "'ort.runtime'"),
        ({}, {"optimization": "all"}, "'ort.optimization'"),
        ({}, {"file": "../x.ort"}, "plain name"),
        ({"ort": "model.ort"}, {}, "'ort' is 'model.ort'"),
    ],
)
def test_the_manifest_section_is_checked(top: dict[str, Any], ort_fields: dict[str, Any], match: str) -> None:
    m = _manifest()
    for key, value in ort_fields.items():
        if value is None:
            del m["ort"][key]
        else:
            m["ort"][key] = value
    m.update(top)
    with pytest.raises(BundleError, match=match):
        parse_manifest(json.dumps(m).encode(), "m.json")
    assert parse_manifest(json.dumps(_manifest()).encode(), "m.json").ort == _manifest()["ort"]


def test_optimize_is_for_onnx(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"TFL3" * 8)
    with pytest.raises(BundleError, match="--optimize writes an ORT-format companion of an ONNX model"):
        create_bundle(tmp_path / "m.tflite", tmp_path / "out", name="t", version=1, optimize=True)
    with pytest.raises(BundleError, match="use one of basic, extended"):
        ort_format.write_ort(tmp_path / "m.onnx", tmp_path / "m.ort", optimization="all")


def test_cli_bundle_create_optimize_and_the_store_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli_models import register
    from ota.store import ModelStore

    parser = argparse.ArgumentParser(prog="edge-agent")
    register(parser.add_subparsers(dest="command"))
    src = _weights_model(tmp_path / "src.onnx")
    out = tmp_path / "b"
    args = parser.parse_args(["bundle", "create", str(src), "--name", "cls", "--version", "2", "--decoder",
                              "classification", "--optimize", "--out", str(out)])  # fmt: skip
    assert args.func(args) == 0
    assert "ort     model.ort (sha256" in capsys.readouterr().out
    args = parser.parse_args(["bundle", "check", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "ok  ORT-format companion model.ort: size" in text
    if _usable():
        assert "ok  the session is built from model.ort" in text
    stored = ModelStore(tmp_path / "store").import_bundle(out, "job1")
    kept = open_bundle(stored.path, verify=True)
    assert kept.ort_path is not None and kept.ort_path.read_bytes() == (out / "model.ort").read_bytes()


def test_a_remote_bundle_brings_its_companion(tmp_path: Path) -> None:
    import hashlib

    import httpx

    from ota.remote_bundle import RemoteBundleFetcher
    from ota.update_job import UpdateJob

    out = _bundle(tmp_path)
    served = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    class Body(httpx.SyncByteStream):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self) -> Iterator[bytes]:
            yield self.data

    def handler(request: httpx.Request) -> httpx.Response:
        data = served.get(request.url.path.removeprefix("/b/"))
        if data is None:
            return httpx.Response(404, stream=Body(b""))
        return httpx.Response(200, headers={"Content-Length": str(len(data))}, stream=Body(data))

    fetch = RemoteBundleFetcher(trust=None, require_signed=False, agent_version="0.1.0", runtimes=("onnx",),
                                transport=httpx.MockTransport(handler))  # fmt: skip
    job = UpdateJob(job_id="j1", action="deploy", origin="fleet", created_at=0.0,
                    source="https://models.example/b/manifest.json",
                    manifest_sha256=hashlib.sha256(served["manifest.json"]).hexdigest())  # fmt: skip
    dest = fetch(job, tmp_path / "staged", lambda s: False)
    assert (dest / "model.ort").read_bytes() == served["model.ort"]
    assert open_bundle(dest, verify=True).ort_path == dest / "model.ort"
    served["model.ort"] = served["model.ort"][::-1]
    with pytest.raises(VerificationError, match="ORT-format companion"):
        fetch(job, tmp_path / "staged2", lambda s: False)

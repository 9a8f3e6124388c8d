"""Manifest parsing (strict), opening and verifying bundles, create_bundle + check round trips, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli_models import check_bundle, parse_input_spec, register
from inference.bundle import MAX_MANIFEST_BYTES, open_bundle, parse_manifest
from inference.bundle_builder import create_bundle
from inference.errors import BundleError, ConfigError, VerificationError

WHERE = "/b/manifest.json"


def _manifest(**extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schema": 1,
        "name": "det",
        "version": 3,
        "format": "onnx",
        "file": "model.onnx",
        "sha256": "ab" * 32,
        "size": 10,
    }
    m.update(extra)
    return m


def _parse(m: Any) -> Any:
    return parse_manifest(json.dumps(m).encode(), WHERE)


def test_minimal_and_full_manifests_round_trip() -> None:
    m = _parse(_manifest())
    assert (m.name, m.version, m.decoder, m.input, m.labels) == ("det", 3, "raw", {}, [])
    full = _manifest(
        input={"shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW", "color": "BGR", "scale": 0.5,
               "mean": [0.1, 0.2, 0.3], "std": 0.5, "resize": "letterbox", "pad": 0},
        task="classification", decoder="classification", decoder_params={"top_k": 2}, labels=["a", "b"],
        validation={"golden": [{"input": "golden/0_in.npy", "outputs": ["golden/0_out0.npy"]}], "atol": 0.1,
                    "rtol": 0.0, "max_latency_ms": 50},
        probation={"frames": 100, "seconds": 30, "max_error_rate": 0.01, "min_confidence_ratio": 0.8},
        reference={"brightness": {"edges": [0, 1], "p": [1.0]}}, release_counter=7,
        expires="2030-01-01T00:00:00Z", compat={"runtimes": ["onnx"], "min_agent_version": "0.1.0"},
    )  # fmt: skip
    m2 = _parse(full)
    assert m2.golden[0]["input"] == "golden/0_in.npy" and m2.probation["frames"] == 100
    again = parse_manifest(m2.to_bytes(), WHERE)
    assert again == m2
    assert parse_manifest(m.to_bytes(), WHERE) == m


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        ({"extra": 1}, "unknown key 'extra'"),
        ({"input": {"shape": [1, 3, 8, 8], "colour": "RGB"}}, "unknown key 'input.colour'"),
        ({"validation": {"atol": 0.1, "tolerance": 1}}, "unknown key 'validation.tolerance'"),
        ({"probation": {"frame": 3}}, "unknown key 'probation.frame'"),
        ({"compat": {"runtime": ["onnx"]}}, "unknown key 'compat.runtime'"),
        ({"version": "3"}, "'version' is '3'"),
        ({"version": True}, "'version'"),
        ({"version": -1}, "'version'"),
        ({"schema": 2}, "schema 2 is not supported"),
        ({"schema": "1"}, "'schema'"),
        ({"name": "../evil"}, "'name'"),
        ({"name": ""}, "'name'"),
        ({"format": "pt"}, "'format'"),
        ({"sha256": "xyz"}, "'sha256'"),
        ({"size": 0}, "'size'"),
        ({"size": 1.5}, "'size'"),
        ({"labels": [1, 2]}, "'labels'"),
        ({"labels": "../labels.txt"}, "'labels'"),
        ({"decoder": "yolo9000"}, "unknown decoder 'yolo9000'"),
        ({"decoder": 5}, "'decoder'"),
        ({"decoder_params": [1]}, "'decoder_params'"),
        ({"input": {"shape": "1x3x8x8"}}, "input.shape"),
        ({"input": {"std": 0}}, "input.std"),
        ({"input": []}, "'input'"),
        ({"validation": {"atol": -1}}, "'validation.atol'"),
        ({"validation": {"golden": [{"input": "/etc/passwd", "outputs": []}]}}, "golden\\[0\\].input"),
        ({"validation": {"golden": [{"input": "g/0.npy", "outputs": ["../../x.npy"]}]}}, "outputs\\[0\\]"),
        ({"validation": {"golden": [{"input": "g/0.npy"}]}}, "'validation.golden'"),
        ({"probation": {"max_error_rate": 2}}, "'probation.max_error_rate'"),
        ({"compat": {"runtimes": ["tensorrt"]}}, "'compat.runtimes'"),
        ({"expires": "next tuesday"}, "'expires'"),
        ({"release_counter": -5}, "'release_counter'"),
        ({"file": "../model.onnx"}, "'file'"),
        ({"file": "sub/model.onnx"}, "'file'"),
        ({"file": ".model.onnx"}, "'file'"),
        ({"file": "model.tflite"}, "does not end in .onnx"),
        ({"reference": [1]}, "'reference'"),
    ],
)
def test_bad_manifests_name_the_key_and_the_file(mutate: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match) as err:
        _parse(_manifest(**mutate))
    assert WHERE in str(err.value)


@pytest.mark.parametrize("key", ["name", "version", "format", "file", "sha256", "size", "schema"])
def test_missing_required_keys(key: str) -> None:
    m = _manifest()
    del m[key]
    with pytest.raises(BundleError, match=f"missing required key.*{key}"):
        _parse(m)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1, 2]", b'"x"', b"\xff\xfe", b'{"schema": NaN}', b"null"],
)
def test_not_json_objects(data: bytes) -> None:
    with pytest.raises(BundleError, match=WHERE):
        parse_manifest(data, WHERE)


def test_manifest_size_limit(tmp_path: Path) -> None:
    big = json.dumps(_manifest(reference={"pad": "x" * MAX_MANIFEST_BYTES})).encode()
    with pytest.raises(BundleError, match="limit"):
        parse_manifest(big, WHERE)
    (tmp_path / "manifest.json").write_bytes(big)
    with pytest.raises(BundleError, match="limit"):
        open_bundle(tmp_path)


# -- open_bundle / verify ------------------------------------------------------------------


def _write_bundle(folder: Path, data: bytes, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    m = _manifest(sha256=hashlib.sha256(data).hexdigest(), size=len(data), **extra)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_open_verified_bundle(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    data = tiny_models["classifier"].read_bytes()
    b = open_bundle(_write_bundle(tmp_path / "b", data, labels=["r", "g", "b"]))
    assert not b.bare and b.model_path == tmp_path / "b" / "model.onnx" and b.labels() == ["r", "g", "b"]
    assert b.manifest_path == tmp_path / "b" / "manifest.json"


def test_labels_file(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    root = _write_bundle(tmp_path / "b", tiny_models["classifier"].read_bytes(), labels="labels.txt")
    (root / "labels.txt").write_text("cat\n\ndog\nbird\n")
    assert open_bundle(root).labels() == ["cat", "dog", "bird"]
    (root / "labels.txt").unlink()
    with pytest.raises(BundleError, match="labels file"):
        open_bundle(root).labels()


def test_missing_manifest_and_missing_model(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        open_bundle(tmp_path / "empty")
    root = _write_bundle(tmp_path / "b", tiny_models["classifier"].read_bytes())
    (root / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"'model\.onnx' it names is missing"):
        open_bundle(root)
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nothing-here")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match="neither a bundle folder"):
        open_bundle(tmp_path / "notes.txt")


def test_model_file_linked_outside_the_bundle(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    root = _write_bundle(tmp_path / "b", tiny_models["classifier"].read_bytes())
    (root / "model.onnx").unlink()
    (root / "model.onnx").symlink_to(tiny_models["classifier"])
    with pytest.raises(BundleError, match="outside the bundle"):
        open_bundle(root)


def test_sha256_and_size_mismatch_are_verification_errors(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    data = tiny_models["classifier"].read_bytes()
    root = _write_bundle(tmp_path / "b", data)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (root / "model.onnx").write_bytes(bytes(flipped))
    with pytest.raises(VerificationError, match=r"sha256 .* does not match") as err:
        open_bundle(root)
    assert str(root / "model.onnx") in str(err.value)
    assert open_bundle(root, verify=False).manifest.sha256 == hashlib.sha256(data).hexdigest()
    (root / "model.onnx").write_bytes(data[:-1])
    with pytest.raises(VerificationError, match="size"):
        open_bundle(root)


def test_bare_model_files(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    src = tiny_models["classifier"]
    b = open_bundle(src)
    assert b.bare and b.model_path == src and b.manifest.name == "classifier" and b.manifest.version == 0
    assert b.manifest.decoder == "raw" and b.manifest.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    odd = tmp_path / "my model (v2).ONNX"
    odd.write_bytes(src.read_bytes())
    assert open_bundle(odd).manifest.name == "my-model-v2"
    (tmp_path / "empty.tflite").write_bytes(b"")
    with pytest.raises(BundleError, match="empty"):
        open_bundle(tmp_path / "empty.tflite")


# -- create_bundle -------------------------------------------------------------------------


def _images(n: int = 2) -> list[Any]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (30 + 10 * i, 40, 3), dtype=np.uint8) for i in range(n)]


def test_create_then_check_round_trip(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "bundles" / "cls-1"
    b = create_bundle(
        tiny_models["classifier"], out, name="cls", version=1, decoder="classification",
        labels=["b", "g", "r"], input_spec={"color": "BGR"}, golden_images=_images(),
        validation={"max_latency_ms": 100},
    )  # fmt: skip
    m = b.manifest
    assert m.input["shape"] == [1, 3, 8, 8] and m.input["color"] == "BGR" and m.input["layout"] == "NCHW"
    assert m.validation["max_latency_ms"] == 100 and len(m.golden) == 2 and m.release_counter == 1
    assert sorted(p.name for p in out.iterdir()) == ["golden", "manifest.json", "model.onnx"]
    x = np.load(out / m.golden[0]["input"])
    y = np.load(out / m.golden[0]["outputs"][0])
    assert x.shape == (1, 3, 8, 8) and y.shape == (1, 3)
    lines: list[str] = []
    check_bundle(out, lines.append)
    assert any("2 golden pair(s) reproduced" in line for line in lines)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_create_refuses_an_existing_folder_and_leaves_nothing_on_failure(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        create_bundle(tiny_models["classifier"], tmp_path / "taken", name="x", version=1)
    with pytest.raises(BundleError, match="contradicts"):
        create_bundle(
            tiny_models["classifier"],
            tmp_path / "bad",
            name="x",
            version=1,
            input_spec={"shape": [1, 3, 16, 16]},
        )
    with pytest.raises(BundleError, match="unknown decoder"):
        create_bundle(tiny_models["classifier"], tmp_path / "bad", name="x", version=1, decoder="nope")
    with pytest.raises(BundleError, match="decoder 'ssd_anchors'"):
        create_bundle(tiny_models["classifier"], tmp_path / "bad", name="x", version=1, decoder="ssd_anchors")
    with pytest.raises(BundleError, match="'name'"):
        create_bundle(tiny_models["classifier"], tmp_path / "bad", name="a/b", version=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_check_catches_golden_drift_and_nan(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = create_bundle(
        tiny_models["classifier"], tmp_path / "b", name="c", version=1, golden_images=_images(1)
    )
    golden_out = out.root / out.manifest.golden[0]["outputs"][0]
    np.save(golden_out, np.load(golden_out) + 0.5)
    with pytest.raises(BundleError, match="max abs difference"):
        check_bundle(out.root, lambda s: None)
    nan = create_bundle(tiny_models["nan"], tmp_path / "n", name="n", version=1, golden_images=_images(1))
    with pytest.raises(BundleError, match="NaN"):
        check_bundle(nan.root, lambda s: None)


def test_quantised_bundle_round_trip(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    b = create_bundle(tiny_models["quant_u8"], tmp_path / "q", name="q", version=2, golden_images=_images(1))
    assert b.manifest.input["dtype"] == "uint8" and b.manifest.input["layout"] == "NHWC"
    assert np.load(b.root / b.manifest.golden[0]["input"]).dtype == np.uint8
    check_bundle(b.root, lambda s: None)


# -- CLI -------------------------------------------------------------------------------------


def test_parse_input_spec_forms() -> None:
    assert parse_input_spec('{"shape": [1, 3, 8, 8]}') == {"shape": [1, 3, 8, 8]}
    assert parse_input_spec("shape=[1,3,640,640],color=BGR,scale=1/255,mean=0.5,std=[0.5,0.5,0.5]") == {
        "shape": [1, 3, 640, 640], "color": "BGR", "scale": 1 / 255, "mean": 0.5, "std": [0.5, 0.5, 0.5],
    }  # fmt: skip
    with pytest.raises(ConfigError):
        parse_input_spec("shape")
    with pytest.raises(ConfigError):
        parse_input_spec("{not json")


def _cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="edge-agent")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_bundle_create_and_check(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, img in enumerate(_images(3)):
        cv2.imwrite(str(imgs / f"{i}.png"), img)
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    out = tmp_path / "out"
    argv = ["bundle", "create", str(tiny_models["classifier"]), "--name", "cls", "--version", "4",
            "--decoder", "classification", "--labels", str(tmp_path / "labels.txt"),
            "--input-spec", "scale=1/255,mean=0.5", "--golden-from", str(imgs), "--golden-count", "2",
            "--out", str(out)]  # fmt: skip
    assert _cli(argv) == 0
    assert "bundle cls v4" in capsys.readouterr().out
    assert open_bundle(out).manifest.labels == ["red", "green", "blue"]
    assert _cli(["bundle", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 golden pair(s) reproduced" in text and text.strip().endswith(": ok")
    m = json.loads((out / "manifest.json").read_text())
    m["surprise"] = True
    (out / "manifest.json").write_text(json.dumps(m))
    assert _cli(["bundle", "check", str(out)]) == 1
    assert "unknown key 'surprise'" in capsys.readouterr().err

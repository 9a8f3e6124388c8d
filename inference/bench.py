"""The measuring core of ``edge-agent bench``: time a runtime's ``run()`` like ``benchmark_model``.

What is timed is exactly ``Runtime.run(feeds)`` on inputs prepared before the loop, as
TFLite's ``benchmark_model`` and ``onnxruntime_perf_test`` do: no preprocessing, no decoding,
no allocation in the loop beyond the runtime's own (the sample buffer is preallocated).

One configuration (model × runtime × threads) is measured by ``run_bench`` in the current
process. Peak RSS is per process, so ``bench_isolated`` runs each configuration in a fresh
``python -m inference.bench … --json`` subprocess: its peak RSS and the RSS added by loading
the model (VmRSS after load minus before, with the engine already imported) are honest.

Memory figures come from the operating system: ``/proc/self/status`` (VmRSS, VmHWM) and
``resource.getrusage(RUSAGE_SELF).ru_maxrss``; nothing is estimated.

    machine_info()                      CPU model, cores, OS, Python, numpy
    summarize(samples_ms)               mean/std/min/p50/p90/p99/max (numpy, linear interpolation)
    run_bench(model, kind, threads, …)  -> BenchResult, in this process
    bench_isolated(model, kind, …)      -> BenchResult, in a fresh subprocess
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import BundleError, ConfigError, EdgeAgentError
from inference.runtime import RUNTIMES, Array, Runtime, RuntimeOptions, TensorInfo, load_runtime

INPUT_MODES = ("random", "golden")  # or a folder of images
DEFAULT_SPATIAL = 640  # a dynamic image height/width without a manifest value
# imported before the RSS baseline, so "RSS added by loading the model" leaves the engine's own code out
ENGINE_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("inference.onnx_runtime", "onnxruntime"),
    "tflite": ("inference.litert_runtime", "ai_edge_litert.interpreter"),
}
Progress = Callable[[int, int], None]  # (done, total); total 0 when running for a duration

# --------------------------------------------------------------------------------------------
# the machine and its memory


def _read_proc_status() -> dict[str, int]:
    """VmRSS / VmHWM / VmPeak … from /proc/self/status, in kB ({} where /proc does not exist)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key.startswith("Vm"):
                    parts = rest.split()
                    if parts and parts[0].isdigit():
                        out[key] = int(parts[0])
    except OSError:
        pass
    return out


def rss_mb() -> float:
    """The current resident set size in MiB (VmRSS), or the peak where /proc is missing."""
    status = _read_proc_status()
    if "VmRSS" in status:
        return status["VmRSS"] / 1024.0
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's peak resident set size in MiB, as the OS counts it.

    The larger of VmHWM (/proc/self/status) and ``ru_maxrss`` (kB on Linux, bytes on macOS).
    """
    import resource

    maxrss = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    maxrss_mb = maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0
    hwm = _read_proc_status().get("VmHWM")
    return max(maxrss_mb, hwm / 1024.0 if hwm is not None else 0.0)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and value.strip() and key not in found:
            found[key] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if key in found:
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def _mem_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, memory, OS, Python, numpy."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    mem = _mem_total_mb()
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "memory_mb": round(mem, 1) if mem is not None else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def machine_slug(info: dict[str, Any] | None = None) -> str:
    """A short file-name-safe name for the machine, e.g. ``x86_64-amd-epyc-2c``."""
    info = info or machine_info()
    words = "".join(c if c.isalnum() else " " for c in str(info.get("cpu", ""))).lower().split()
    noise = {"r", "tm", "cpu", "processor", "with", "radeon", "graphics", "core", "ghz"}
    cpu = "-".join(w for w in words if w not in noise and not w.startswith("@"))[:32].strip("-")
    return "-".join(p for p in (str(info.get("arch", "")), cpu, f"{info.get('cores', 0)}c") if p)


# --------------------------------------------------------------------------------------------
# latency summary


def summarize(samples_ms: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float]:
    """mean, std (population), min, p50, p90, p99, max of latency samples in ms."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples to summarise")
    p50, p90, p99 = np.percentile(a, [50.0, 90.0, 99.0])
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(a.max()),
    }


# --------------------------------------------------------------------------------------------
# the result


@dataclass
class BenchResult:
    """One configuration's figures. ``to_json()`` gives the ``edge-agent bench --json`` keys."""

    model: str
    runtime: str
    runtime_version: str
    threads: int
    runs: int
    warmup: int
    input: str  # random | golden | dir
    input_shapes: list[list[int]]
    init_ms: float  # loading the model into the runtime
    first_ms: float  # the first run(), which allocates arenas and packs weights
    latency_ms: dict[str, float]  # warm runs: mean std min p50 p90 p99 max
    fps: float  # timed runs ÷ wall time of the timed loop
    peak_rss_mb: float  # peak RSS of the measuring process (VmHWM / ru_maxrss)
    rss_model_mb: float  # VmRSS after loading minus before (engine already imported)
    rss_first_mb: float  # VmRSS added by the first run
    isolated: bool = False  # measured in its own subprocess
    provider: str = ""  # what ran the model: an ORT execution provider, or LiteRT's xnnpack | builtin
    providers: list[str] = field(default_factory=list)  # the provider list asked for (names)
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_json(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        for key in ("init_ms", "first_ms", "fps", "peak_rss_mb", "rss_model_mb", "rss_first_mb"):
            d[key] = round(float(d[key]), 4)
        d["latency_ms"] = {k: round(v, 4) for k, v in self.latency_ms.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------
# what to measure


@dataclass(frozen=True)
class Target:
    """A resolved model: the file to load, its format, and its bundle folder (None for a bare file)."""

    name: str
    model_path: Path
    format: str  # onnx | tflite
    bundle_root: Path | None
    manifest: Any = None  # inference.bundle.Manifest when the bundle module is present


def resolve_target(spec: str | Path, runtime: str | None = None) -> Target:
    """A bundle folder, a bare ``.onnx``/``.tflite`` file, or a zoo model name.

    ``runtime`` (onnx | tflite) names the format of a bare file whose suffix does not.

    Raises ``BundleError`` / ``ConfigError`` naming the problem and what to do.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        from inference import zoo

        if text in zoo.MODEL_NAMES:
            path = zoo.model_path(text)
        else:
            raise BundleError(
                f"{text}: no such model file or bundle folder, and not a zoo model name; "
                f"give a .onnx/.tflite file, a bundle folder or one of {', '.join(zoo.MODEL_NAMES)}"
            )
    if path.is_file():  # a bare model file: no manifest needed to time it
        fmt = _format_of(path, runtime)
        return Target(path.stem, path, fmt, None, None)
    from inference.bundle import open_bundle

    bundle = open_bundle(path, verify=True)
    model_path = Path(bundle.model_path)
    fmt = str(getattr(bundle.manifest, "format", "") or "") or _format_of(model_path)
    name = str(getattr(bundle.manifest, "name", "") or model_path.stem)
    return Target(name, model_path, fmt, None if bundle.bare else Path(bundle.root), bundle.manifest)


def _format_of(path: Path, runtime: str | None = None) -> str:
    """The format by suffix; ``runtime`` only names it for a file whose suffix does not."""
    from inference.runtime import SUFFIXES, runtime_kind_for

    known = SUFFIXES.get(path.suffix.lower())
    return known if known is not None else runtime_kind_for(path, runtime)


def runtime_kinds(target: Target, runtime: str) -> list[str]:
    """Which runtimes can run ``target`` for ``--runtime auto|onnx|tflite``."""
    if runtime in ("auto", "", None):
        return [target.format]
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}: use auto or one of {', '.join(sorted(RUNTIMES))}")
    if runtime != target.format:
        raise ConfigError(
            f"{target.model_path} is a {target.format} model; the {runtime} runtime cannot run it: "
            f"use --runtime auto or {target.format}"
        )
    return [runtime]


def parse_threads(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; raises ``ConfigError`` on anything else."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(
                f"--threads {text!r}: {part!r} is not a positive whole number; give e.g. --threads 1,2,4"
            )
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise ConfigError("--threads is empty; give e.g. --threads 1,2,4")
    return out


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """``--input-size HxW`` -> ``(h, w)`` (``None`` when not given); ``ConfigError`` on a bad value."""
    if text is None:
        return None
    from inference.preprocess import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"--input-size: {exc}") from None


def parse_shapes(texts: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["1x3x480x640"]`` or ``["images:1x3x480x640"]`` -> {name or "": shape}."""
    out: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, _, dims = text.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise ConfigError(f"--shape {text!r}: write [INPUT:]DxDx…, e.g. --shape 1x3x480x640")
        out[name] = shape
    return out


# --------------------------------------------------------------------------------------------
# inputs


def _manifest_input_shape(manifest: Any) -> tuple[int, ...] | None:
    spec = getattr(manifest, "input", None)
    shape = spec.get("shape") if isinstance(spec, dict) else getattr(spec, "shape", None)
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(d, int) and d > 0 for d in shape):
        return tuple(int(d) for d in shape)
    return None


def concrete_shape(
    info: TensorInfo, override: tuple[int, ...] | None = None, hint: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The shape to feed ``info``: ``override``, else its static dims with dynamic ones filled.

    Dynamic dims come from ``hint`` (the manifest's input shape) when it fits, else: batch 1,
    an image height/width ``DEFAULT_SPATIAL`` (NCHW or NHWC told apart by a 1/3 channel dim),
    anything else 1.
    """
    if override is not None:
        if len(override) != len(info.shape) or any(
            d is not None and d != o for d, o in zip(info.shape, override, strict=True)
        ):
            raise ConfigError(
                f"--shape {'x'.join(map(str, override))} does not fit input {info.name!r} of shape "
                f"{_fmt_shape(info.shape)}: keep the static dims and fill the dynamic ones"
            )
        return override
    if not info.is_dynamic:
        return tuple(int(d) for d in info.shape if d is not None)
    if (
        hint is not None
        and len(hint) == len(info.shape)
        and all(d is None or d == h for d, h in zip(info.shape, hint, strict=True))
    ):
        return hint
    rank = len(info.shape)
    spatial: set[int] = set()
    if rank == 4:
        if info.shape[1] in (1, 3):
            spatial = {2, 3}
        elif info.shape[3] in (1, 3):
            spatial = {1, 2}
        else:
            spatial = {2, 3}
    elif rank == 3:
        spatial = {1, 2}
    return tuple(
        int(d) if d is not None else (DEFAULT_SPATIAL if i in spatial else 1)
        for i, d in enumerate(info.shape)
    )


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def random_tensor(info: TensorInfo, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    """Random values of the input's dtype: [0, 1) floats, the full range of 8-bit ints, small other ints."""
    dt = np.dtype(info.dtype)
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dt, copy=False)
    if dt.kind in "iu":
        if dt.itemsize == 1:
            lo, hi = (0, 255) if dt.kind == "u" else (-128, 127)
        else:
            lo, hi = 0, 100
        return rng.integers(lo, hi, size=shape, endpoint=True, dtype=dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    raise ConfigError(
        f"input {info.name!r} has dtype {dt}, which random inputs cannot fill: use --input golden"
    )


def _golden_inputs(target: Target, infos: list[TensorInfo]) -> list[list[Array]]:
    if target.bundle_root is None:
        raise ConfigError(
            f"{target.model_path}: --input golden needs a bundle with golden pairs; this is a bare model "
            "file: use --input random or an image folder, or make a bundle with `edge-agent bundle create`"
        )
    validation = getattr(target.manifest, "validation", None)
    pairs = validation.get("golden") if isinstance(validation, dict) else getattr(validation, "golden", None)
    if not pairs:
        raise ConfigError(
            f"{target.bundle_root}: the manifest lists no golden pairs (validation.golden): "
            "use --input random or an image folder"
        )
    feeds: list[list[Array]] = []
    for pair in pairs:
        rel = pair["input"] if isinstance(pair, dict) else pair.input
        rels = rel if isinstance(rel, list) else [rel]
        arrays = [np.load(target.bundle_root / str(r), allow_pickle=False) for r in rels]
        if len(arrays) != len(infos):
            raise BundleError(
                f"{target.bundle_root}: golden input {rel} has {len(arrays)} arrays, the model takes "
                f"{len(infos)}: rebuild the golden pairs"
            )
        feeds.append([np.ascontiguousarray(a, dtype=i.dtype) for a, i in zip(arrays, infos, strict=True)])
    return feeds


def _dir_inputs(target: Target, runtime: Runtime, folder: Path) -> list[list[Array]]:
    """Images from ``folder``, preprocessed with the model's own ``Preprocessor``."""
    images = _read_images(folder)
    pre = make_preprocessor(target, runtime.inputs[0])
    return [[np.ascontiguousarray(pre(img)[0])] for img in images]


def make_preprocessor(target: Target, tensor: TensorInfo) -> Any:
    """The ``Preprocessor`` for ``target``: its manifest's input spec, or the model's own for a bare file."""
    from inference.preprocess import InputSpec, Preprocessor, resolve_input_spec

    spec = getattr(target.manifest, "input", None)
    if not isinstance(spec, InputSpec):
        spec = resolve_input_spec(spec if isinstance(spec, dict) else None, tensor, str(target.model_path))
    return Preprocessor(spec, tensor)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _read_images(folder: Path, limit: int = 32) -> list[npt.NDArray[np.uint8]]:
    if not folder.is_dir():
        raise ConfigError(f"--input {folder}: not 'random', 'golden' or a folder of images")
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = [img for p in files if (img := cv2.imread(str(p), cv2.IMREAD_COLOR)) is not None]
    if not images:
        raise ConfigError(f"--input {folder}: no readable images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return [np.ascontiguousarray(i, dtype=np.uint8) for i in images]


def _image_hint(
    target: Target, runtime: Runtime, input_size: tuple[int, int] | None
) -> tuple[int, ...] | None:
    """The first input's shape as ``load_model`` would choose it (the manifest's, the exporter
    metadata's for a bare file, ``input_size``); ``None`` for an input that is not an image."""
    info = runtime.inputs[0]
    if len(info.shape) not in (3, 4):
        if input_size is not None:
            raise ConfigError(
                f"--input-size: input {info.name!r} is {_fmt_shape(info.shape)}, not an image; use --shape"
            )
        return None
    from inference.exporter_config import read_exporter_config
    from inference.preprocess import resolve_input_spec

    spec_in = dict(getattr(target.manifest, "input", None) or {})
    if target.bundle_root is None:
        cfg = read_exporter_config(
            target.model_path, runtime.kind, runtime.inputs, runtime.outputs, input_size
        )
        spec_in = dict(cfg.input) if cfg is not None else {}
    if not spec_in and input_size is None:
        return None
    return resolve_input_spec(spec_in, info, str(target.model_path), size=input_size).shape


def prepare_inputs(
    target: Target,
    runtime: Runtime,
    mode: str,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    input_size: tuple[int, int] | None = None,
) -> list[list[Array]]:
    """Feeds for the timed loop (one list per distinct input set), built before timing.
    Random inputs take the shape ``load_model`` would (``input_size`` for dynamic dims)."""
    shapes = shapes or {}
    if mode == "random":
        rng = np.random.default_rng(seed)
        hint = _image_hint(target, runtime, input_size) if runtime.inputs else None
        feeds: list[Array] = []
        for n, info in enumerate(runtime.inputs):
            override = shapes.get(info.name, shapes.get("") if n == 0 else None)
            shape = concrete_shape(info, override, hint if n == 0 else None)
            feeds.append(random_tensor(info, shape, rng))
        return [feeds]
    if mode == "golden":
        return _golden_inputs(target, runtime.inputs)
    return _dir_inputs(target, runtime, Path(mode))


def input_label(mode: str) -> str:
    return mode if mode in INPUT_MODES else "dir"


# --------------------------------------------------------------------------------------------
# the timed loop


def timed_loop(
    run: Callable[[Sequence[Array]], object],
    feeds: list[list[Array]],
    runs: int,
    duration_s: float | None = None,
    progress: Progress | None = None,
) -> tuple[npt.NDArray[np.float64], float]:
    """Time ``run(feeds[i % n])`` ``runs`` times (or for ``duration_s`` seconds).

    Returns (samples in ms, wall seconds of the whole loop). Only ``run`` sits between the two
    clock reads; samples go into a preallocated buffer.
    """
    clock = time.perf_counter
    n = len(feeds)
    cap = max(runs, 1) if duration_s is None else max(runs, 1024)
    buf = np.empty(cap, dtype=np.float64)
    total = runs if duration_s is None else 0
    next_tick = 0.0
    i = 0
    start = clock()
    deadline = None if duration_s is None else start + duration_s
    while True:
        if deadline is None:
            if i >= runs:
                break
        elif clock() >= deadline and i >= 1:
            break
        feed = feeds[i % n]
        t0 = clock()
        run(feed)
        t1 = clock()
        if i == cap:
            buf = np.concatenate([buf, np.empty(cap, dtype=np.float64)])
            cap *= 2
        buf[i] = (t1 - t0) * 1000.0
        i += 1
        if progress is not None and t1 >= next_tick:
            progress(i, total)
            next_tick = t1 + 0.1
    wall = clock() - start
    if progress is not None:
        progress(i, total)
    return buf[:i].copy(), wall


def run_bench(
    model: str | Path | Target,
    kind: str = "auto",
    threads: int = 1,
    runs: int = 100,
    warmup: int = 10,
    duration: float | None = None,
    input_mode: str = "random",
    shapes: dict[str, tuple[int, ...]] | None = None,
    progress: Progress | None = None,
    options: RuntimeOptions | None = None,
    input_size: tuple[int, int] | None = None,
) -> BenchResult:
    """Measure one configuration in this process (see ``bench_isolated`` for honest RSS)."""
    if runs < 1 and duration is None:
        raise ConfigError(f"--runs {runs}: give at least 1 timed run")
    if warmup < 0:
        raise ConfigError(f"--warmup {warmup}: give 0 or more warm-up runs")
    if threads < 1:
        raise ConfigError(f"--threads {threads}: give a positive number of threads")
    target = model if isinstance(model, Target) else resolve_target(model, kind)
    kind = runtime_kinds(target, kind)[0]
    _import_engine(kind)
    opts = options or RuntimeOptions()
    opts = RuntimeOptions(
        threads=threads,
        inter_op_threads=opts.inter_op_threads,
        providers=opts.providers,
        graph_optimization=opts.graph_optimization,
        xnnpack=opts.xnnpack,
        extra=dict(opts.extra),
        cache_dir=opts.cache_dir,
    )
    rss0 = rss_mb()
    t0 = time.perf_counter()
    runtime = load_runtime(target.model_path, opts, kind)
    init_ms = (time.perf_counter() - t0) * 1000.0
    try:
        rss_loaded = rss_mb()
        feeds = prepare_inputs(target, runtime, input_mode, shapes, input_size=input_size)
        rss_inputs = rss_mb()
        t0 = time.perf_counter()
        runtime.run(feeds[0])
        first_ms = (time.perf_counter() - t0) * 1000.0
        rss_first = rss_mb()
        for i in range(warmup):
            runtime.run(feeds[i % len(feeds)])
        samples, wall = timed_loop(runtime.run, feeds, runs, duration, progress)
        peak = peak_rss_mb()
        return BenchResult(
            model=target.name,
            runtime=kind,
            runtime_version=str(runtime.version),
            threads=threads,
            runs=int(samples.size),
            warmup=warmup,
            input=input_label(input_mode),
            input_shapes=[list(map(int, a.shape)) for a in feeds[0]],
            init_ms=init_ms,
            first_ms=first_ms,
            latency_ms=summarize(samples),
            fps=float(samples.size / wall) if wall > 0 else 0.0,
            peak_rss_mb=peak,
            rss_model_mb=rss_loaded - rss0,
            rss_first_mb=rss_first - rss_inputs,
            samples_ms=[float(x) for x in samples],
            provider=str(runtime.provider),
            providers=[p.name for p in opts.specs],
        )
    finally:
        runtime.close()


def _import_engine(kind: str) -> None:
    """Import the runtime module (and its engine) before the RSS baseline is read."""
    for name in ENGINE_MODULES.get(kind, ()):
        with contextlib.suppress(ImportError):  # load_runtime reports a missing engine with the fix
            importlib.import_module(name)


# --------------------------------------------------------------------------------------------
# one configuration in a fresh process


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def worker_command(
    model: str | Path,
    kind: str,
    threads: int,
    runs: int,
    warmup: int,
    duration: float | None = None,
    input_mode: str = "random",
    shapes: Sequence[str] = (),
    progress: bool = False,
    samples: bool = False,
    providers: Sequence[str] = (),
    input_size: tuple[int, int] | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "inference.bench", str(model), "--runtime", kind, "--threads", str(threads),
           "--runs", str(runs), "--warmup", str(warmup), "--input", input_mode]  # fmt: skip
    if providers:
        cmd += ["--providers", ",".join(providers)]
    if duration is not None:
        cmd += ["--duration", str(duration)]
    for s in shapes:
        cmd += ["--shape", s]
    if input_size is not None:
        cmd += ["--input-size", f"{input_size[0]}x{input_size[1]}"]
    if progress:
        cmd.append("--progress")
    if samples:
        cmd.append("--samples")
    return cmd


_ERRORS: dict[str, type[EdgeAgentError]] = {"BundleError": BundleError, "ConfigError": ConfigError}


def bench_isolated(
    model: str | Path,
    kind: str,
    threads: int,
    runs: int = 100,
    warmup: int = 10,
    duration: float | None = None,
    input_mode: str = "random",
    shapes: Sequence[str] = (),
    progress: bool = False,
    samples: bool = False,
    timeout: float | None = None,
    providers: Sequence[str] = (),
    input_size: tuple[int, int] | None = None,
) -> BenchResult:
    """``run_bench`` in a fresh ``python -m inference.bench`` process; its stderr passes through.
    ``providers``: execution provider names or aliases in order (default: CPU)."""
    env = dict(os.environ)
    root = str(_project_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = worker_command(
        model,
        kind,
        threads,
        runs,
        warmup,
        duration,
        input_mode,
        shapes,
        progress,
        samples,
        providers,
        input_size,
    )
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EdgeAgentError(
            f"benchmark of {model} ({kind}, {threads} threads) took longer than {timeout} s: lower --runs"
        ) from exc
    text = proc.stdout.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        doc = {}
    if proc.returncode != 0 or "error" in doc or not doc:
        msg = doc.get("error") or f"the measuring process exited with status {proc.returncode}"
        raise _ERRORS.get(str(doc.get("type")), EdgeAgentError)(str(msg))
    result = BenchResult.from_json(doc)
    result.isolated = True
    return result


def _stderr_progress(label: str) -> Progress:
    def show(done: int, total: int) -> None:
        if total:
            filled = int(30 * done / total)
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r  {label}  [{bar}] {done}/{total}")
        else:
            sys.stderr.write(f"\r  {label}  {done} runs")
        sys.stderr.flush()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """The worker: measure one configuration and print one JSON object on stdout."""
    ap = argparse.ArgumentParser(prog="python -m inference.bench", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--input", default="random")
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--input-size", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--samples", action="store_true")
    ap.add_argument("--providers", default=None, help="execution providers in order, e.g. xnnpack,cpu")
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
    args = ap.parse_args(argv)
    label = f"{Path(args.model).name} {args.runtime} threads={args.threads}"
    try:
        result = run_bench(
            args.model,
            args.runtime,
            args.threads,
            args.runs,
            args.warmup,
            args.duration,
            args.input,
            parse_shapes(args.shape),
            _stderr_progress(label) if args.progress else None,
            RuntimeOptions(providers=args.providers) if args.providers else None,
            parse_input_size(args.input_size),
        )
    except EdgeAgentError as exc:
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        return 2
    finally:
        if args.progress:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    print(json.dumps(result.to_json(samples=args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

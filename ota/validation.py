"""The validation gate: may this candidate bundle serve?

Checks, in order, stopping at the first failure:

1. ``load``     the model loads, its outputs fit the decoder, the manifest input fits the model;
2. ``golden``   each golden input gives the golden outputs within the manifest's atol/rtol,
                with the right shapes and no NaN/Inf;
3. ``live``     recent live frames run through the whole model (preprocess, run, decode) with
                finite outputs;
4. ``latency``  after warm-up, the median latency is within the budget
                (manifest ``validation.max_latency_ms``, else the policy's).

``validate`` runs in this process; ``validate_isolated`` runs it in a child process with a
timeout, so a candidate that crashes or hangs the runtime cannot take the daemon down.

Whose fault: errors are caught where the gate calls into the candidate (load, run,
preprocess, decode, reading its golden files) and only those a model can cause there
(``LOAD_ERRORS``, ``MODEL_ERRORS``) fail the candidate. Anything else raised while checking is
a bug in the gate itself: the report says "internal error in the validation gate" with
``internal=True`` (the candidate is not served: it was not judged), the traceback is logged,
and it is never worded as the model failing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import EdgeAgentError
from inference.providers import provider_specs
from inference.runtime import RuntimeOptions

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 1 << 20

# What running and decoding a candidate can raise on its outputs, besides the runtimes' own
# translated errors (EdgeAgentError): numpy and OpenCV in a decoder fed wrong shapes, dtypes
# or values (reshape/broadcast -> ValueError, out-of-range class index -> IndexError,
# errstate(all="raise") -> FloatingPointError, float() of a non-scalar array -> TypeError,
# overflow and division -> ArithmeticError, cv2.error), and an engine's RuntimeError.
MODEL_ERRORS: tuple[type[BaseException], ...] = (
    EdgeAgentError,
    ValueError,
    IndexError,
    TypeError,
    ArithmeticError,
    RuntimeError,
    cv2.error,
)
# What loading one can raise that the loader did not translate: the engine refusing the file
# (RuntimeError, ValueError), reading it (OSError), or a model too big for the device. A
# TypeError or AttributeError out of the loader is a bug in edge-agent, not in the candidate.
LOAD_ERRORS: tuple[type[BaseException], ...] = (
    EdgeAgentError,
    ValueError,
    IndexError,
    RuntimeError,
    OSError,
    MemoryError,
    cv2.error,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ValidationPolicy:
    warmup_runs: int = 2
    latency_runs: int = 8
    max_latency_ms: float | None = None  # used when the manifest sets no budget
    timeout_s: float = 60.0  # for validate_isolated: load + all checks
    default_atol: float = 1e-3
    default_rtol: float = 1e-3


@dataclass
class ValidationReport:
    ok: bool
    reason: str = ""  # the first failing check, in words; "" when ok
    checks: list[dict[str, Any]] = field(default_factory=list)
    latency_p50_ms: float = 0.0
    load_ms: float = 0.0
    internal: bool = False  # the gate itself failed (a bug in edge-agent): the candidate was not judged

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ValidationReport:
        return cls(
            ok=bool(obj["ok"]),
            reason=str(obj.get("reason", "")),
            checks=list(obj.get("checks", [])),
            latency_p50_ms=float(obj.get("latency_p50_ms", 0.0)),
            load_ms=float(obj.get("load_ms", 0.0)),
            internal=obj.get("internal", False) is True,
        )

    @classmethod
    def failed(cls, check: str, reason: str) -> ValidationReport:
        return cls(ok=False, reason=reason, checks=[{"check": check, "ok": False, "detail": reason}])

    @classmethod
    def internal_error(
        cls,
        exc: BaseException,
        doing: str,
        checks: Sequence[dict[str, Any]] = (),
        latency_p50_ms: float = 0.0,
        load_ms: float = 0.0,
    ) -> ValidationReport:
        """The gate's own code raised ``exc`` while ``doing`` something: not the candidate's fault."""
        reason = (
            f"internal error in the validation gate while {doing} ({type(exc).__name__}: {exc}); "
            "a bug in edge-agent, not the candidate: it was not judged and is not served"
        )
        entry = {"check": "internal", "ok": False, "detail": reason}
        return cls(False, reason, [*checks, entry], latency_p50_ms, load_ms, internal=True)


class _Failed(Exception):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check = check
        self.detail = detail


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EdgeAgentError) else f"{type(exc).__name__}: {exc}"


def _model(check: str, what: str, fn: Callable[..., T], *args: Any) -> T:
    """Call into the candidate; what it may raise there (``MODEL_ERRORS``) fails ``check``."""
    try:
        return fn(*args)
    except MODEL_ERRORS as exc:
        raise _Failed(check, f"{what}: {_describe(exc)}") from exc


def _load_array(check: str, what: str, path: Path) -> npt.NDArray[Any]:
    """A golden ``.npy`` of the candidate's bundle; unreadable or not an array fails ``check``."""
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise _Failed(check, f"{what}: cannot read {path.name} ({type(exc).__name__}: {exc})") from exc


def _finite(arrays: Sequence[npt.NDArray[Any]]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays if np.issubdtype(a.dtype, np.floating))


def _check_golden(model: Any, validation: dict[str, Any], policy: ValidationPolicy) -> str:
    # paths checked to stay inside the bundle when parsed
    pairs = _model("golden", "golden pairs", model.bundle.golden_pairs)
    atol = float(validation.get("atol", policy.default_atol))
    rtol = float(validation.get("rtol", policy.default_rtol))
    runtime = model.runtime
    for i, (inp, outs) in enumerate(pairs):
        x = _load_array("golden", f"golden pair {i}", inp)
        got = _model("golden", f"golden pair {i}", runtime.run, [x])
        want = [_load_array("golden", f"golden pair {i}", p) for p in outs]
        if len(got) != len(want):
            raise _Failed("golden", f"golden pair {i}: model gives {len(got)} outputs, expected {len(want)}")
        for j, (g, w) in enumerate(zip(got, want, strict=True)):
            if g.shape != w.shape:
                raise _Failed(
                    "golden", f"golden pair {i} output {j}: shape {list(g.shape)}, expected {list(w.shape)}"
                )
            if not _finite([g]):
                raise _Failed("golden", f"golden pair {i} output {j}: NaN or Inf in the model's output")
            gf, wf = g.astype(np.float64), w.astype(np.float64)
            if not np.allclose(gf, wf, atol=atol, rtol=rtol):
                diff = float(np.max(np.abs(gf - wf)))
                raise _Failed(
                    "golden",
                    f"golden pair {i} output {j}: differs from the expected output "
                    f"(max abs diff {diff:.3g} > atol {atol:g} + rtol {rtol:g})",
                )
    return f"{len(pairs)} golden pair(s) match (atol {atol:g}, rtol {rtol:g})"


def _check_live(model: Any, frames: Sequence[npt.NDArray[np.uint8]]) -> str:
    for i, frame in enumerate(frames):
        tensor, _ = _model("live", f"live frame {i}", model.preprocessor, frame)
        outputs = _model("live", f"live frame {i}", model.runtime.run, [tensor])
        if not _finite(outputs):
            raise _Failed("live", f"live frame {i}: NaN or Inf in the model's output")
        try:
            model.infer(frame)
        except EdgeAgentError as exc:
            raise _Failed("live", f"live frame {i}: {exc}") from exc
        except MODEL_ERRORS as exc:  # a decoder choking on the outputs: wrong shapes or values
            raise _Failed(
                "live", f"live frame {i}: outputs do not decode ({type(exc).__name__}: {exc})"
            ) from exc
    return f"{len(frames)} live frame(s) decode with finite outputs"


def _check_latency(
    model: Any, frames: Sequence[npt.NDArray[np.uint8]], budget: float | None, policy: ValidationPolicy
) -> float:
    frame = frames[0] if frames else np.zeros((480, 640, 3), np.uint8)
    for _ in range(policy.warmup_runs):
        _model("latency", "warm-up run", model.infer, frame)
    times = []
    for _ in range(max(1, policy.latency_runs)):
        t0 = time.perf_counter()
        _model("latency", "timed run", model.infer, frame)
        times.append((time.perf_counter() - t0) * 1000.0)
    p50 = float(np.median(times))
    if budget is not None and p50 > budget:
        raise _Failed("latency", f"median latency {p50:.1f} ms is over the budget of {budget:g} ms")
    return p50


def validate(
    bundle_path: Path,
    frames: Sequence[npt.NDArray[np.uint8]] = (),
    policy: ValidationPolicy | None = None,
    options: RuntimeOptions | None = None,
    loader: Callable[..., Any] | None = None,
) -> ValidationReport:
    """Run every check on the bundle at ``bundle_path`` in this process.

    Answers with a report, not an exception: a candidate that fails is ``ok=False`` with the
    first failing check; a bug in the gate is ``ok=False, internal=True`` (module docstring).
    """
    from inference.model import load_model

    policy = policy or ValidationPolicy()
    checks: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        model = (loader or load_model)(Path(bundle_path), options)
    except LOAD_ERRORS as exc:  # the loader's own errors, or an engine's it did not translate
        return ValidationReport.failed("load", f"does not load: {_describe(exc)}")
    except Exception as exc:
        log.exception("validation of %s: the gate failed while loading it", bundle_path)
        return ValidationReport.internal_error(exc, "loading the candidate")
    load_ms = (time.perf_counter() - t0) * 1000.0
    checks.append({"check": "load", "ok": True, "detail": f"loaded in {load_ms:.0f} ms"})
    p50 = 0.0
    try:
        manifest = model.bundle.manifest
        validation: dict[str, Any] = dict(getattr(manifest, "validation", None) or {})
        budget = validation.get("max_latency_ms")
        budget = float(budget) if budget is not None else policy.max_latency_ms
        checks.append(
            {
                "check": "golden",
                "ok": True,
                "detail": _check_golden(model, validation, policy),
            }
        )
        checks.append({"check": "live", "ok": True, "detail": _check_live(model, frames)})
        p50 = _check_latency(model, frames, budget, policy)
        checks.append({"check": "latency", "ok": True, "detail": f"median {p50:.1f} ms (budget {budget} ms)"})
    except _Failed as failed:
        checks.append({"check": failed.check, "ok": False, "detail": failed.detail})
        return ValidationReport(False, failed.detail, checks, p50, load_ms)
    except Exception as exc:  # not raised by the candidate (that is _Failed): the gate's own bug
        doing = f"checking it (after {', '.join(c['check'] for c in checks)})"
        log.exception("validation of %s: the gate failed while %s", bundle_path, doing)
        return ValidationReport.internal_error(exc, doing, checks, p50, load_ms)
    finally:
        model.close()
    return ValidationReport(True, "", checks, p50, load_ms)


def validate_isolated(
    bundle_path: Path,
    frames: Sequence[npt.NDArray[np.uint8]] = (),
    policy: ValidationPolicy | None = None,
    options: RuntimeOptions | None = None,
    python: str = sys.executable,
) -> ValidationReport:
    """``validate`` in a child process: a crash or a hang fails the candidate, not the daemon."""
    policy = policy or ValidationPolicy()
    options = options or RuntimeOptions()
    with tempfile.TemporaryDirectory(prefix="edge-agent-validate-") as tmp:
        frames_path = Path(tmp) / "frames.npy"
        if frames:
            np.save(frames_path, np.stack([np.asarray(f, np.uint8) for f in frames]), allow_pickle=False)
        request = {
            "bundle": str(bundle_path),
            "frames": str(frames_path) if frames else None,
            "policy": asdict(policy),
            "options": {
                "threads": options.threads,
                "providers": [p.to_json() for p in options.specs],
                "cache_dir": None if options.cache_dir is None else str(options.cache_dir),
            },
        }
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        try:
            proc = subprocess.run(
                [python, "-m", "ota.validation"],
                input=json.dumps(request).encode(),
                capture_output=True,
                timeout=policy.timeout_s,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ValidationReport.failed(
                "isolation",
                f"validation hung: no answer within {policy.timeout_s:g} s (the model hangs the runtime)",
            )
    if proc.returncode < 0:
        return ValidationReport.failed(
            "isolation", f"the model crashed the runtime (killed by signal {-proc.returncode})"
        )
    out = proc.stdout[-MAX_REPORT_BYTES:].decode(errors="replace").strip().splitlines()
    try:
        return ValidationReport.from_json(json.loads(out[-1]))
    except (IndexError, ValueError, KeyError, TypeError):
        tail = proc.stderr[-400:].decode(errors="replace").strip()
        return ValidationReport.failed(
            "isolation", f"the validation process failed (exit {proc.returncode}): {tail or 'no output'}"
        )


def _child_main() -> int:
    request = json.loads(sys.stdin.buffer.read(MAX_REPORT_BYTES))
    frames: list[npt.NDArray[np.uint8]] = []
    if request.get("frames"):
        frames = list(np.load(request["frames"], allow_pickle=False))
    opts = request.get("options") or {}
    options = RuntimeOptions(
        threads=opts.get("threads"),
        providers=provider_specs(opts.get("providers") or ["cpu"]),
        cache_dir=Path(opts["cache_dir"]) if opts.get("cache_dir") else None,
    )
    policy = ValidationPolicy(**request.get("policy", {}))
    report = validate(Path(request["bundle"]), frames, policy, options)
    sys.stdout.write(json.dumps(report.to_json()) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())

"""SIGKILL at random points of an update, many trials (DESIGN §9: 100 trials, 0 inconsistent).

Each trial runs a real ``edge-agent run`` with a model store on a fresh state folder, drops a
candidate into ``incoming/``, SIGKILLs the agent during the update, restarts it, and checks
what it settles on. Two kinds of trial alternate:

- *random*: in turn a good candidate, one that fails probation, one with a tampered model
  file; the kill lands at a uniformly random moment of the update, from outside;
- *targeted*: a persisted state is chosen in turn (each with a candidate that passes
  through it) and the kill lands a uniformly random 0-20 ms after that state reached the
  disk, inside its step (for the sub-millisecond steps: at the state itself or within
  1 ms), from a fault point injected through ``tests/fixtures/crash_agent.py`` (the
  manager's ``faults`` hook; the agent has no switch for it). Steps that take a few
  milliseconds (importing a small bundle, moving pointers) are hit this way, which a
  wall-clock kill almost never does.

Checks:

- the state file parses and says IDLE, and ``staging/`` is empty;
- ``current`` names a complete version whose sha256 and size verify;
- the results after the restart come from that version.

A trial that breaks any of these is *inconsistent*. The phase found on disk right after the
kill is recorded, so the spread of the kills over the states is visible.

    python -m benchmarks.crash_trials [--trials N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, result_stem, stop_process, write_json

ROOT = Path(__file__).resolve().parent.parent
TRIALS, QUICK_TRIALS = 100, 10
KILL_WINDOW_S = 0.5  # random trials: the kill lands uniformly in [0, this) after the update started
INSIDE_STEP_S = 0.02  # targeted trials: the kill lands uniformly in [0, this) after the state is on disk
# steps that take well under a millisecond here (no download for a local drop, a pointer swap,
# a report): the kill lands at the state itself, or within 1 ms, half the time each
SHORT_STEPS = {"FETCHING", "STAGED", "COMMITTED", "ROLLING_BACK", "FAILED"}
SHORT_STEP_S = 0.001
TARGETS = [  # (state, candidate that passes through it)
    ("FETCHING", "good"),
    ("VERIFYING", "tampered"),
    ("STAGED", "good"),
    ("VALIDATING", "good"),
    ("ACTIVATING", "collapse"),
    ("PROBATION", "good"),
    ("COMMITTED", "good"),
    ("ROLLING_BACK", "collapse"),
    ("FAILED", "collapse"),
    ("FAILED", "tampered"),
]
SIDE = 16


def _classifier(path: Path, strength: float, seed: int) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((3, 4)) * strength).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "crash_trials",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def build_bundles(folder: Path) -> dict[str, Path]:
    """seed v1, candidates v2 (good), v3 (fails probation), v4 (tampered model bytes)."""
    from inference.bundle_builder import create_bundle

    folder.mkdir(parents=True, exist_ok=True)
    golden = [np.full((SIDE, SIDE, 3), v, np.uint8) for v in (40, 200)]
    out: dict[str, Path] = {}
    for key, version, strength in (
        ("seed", 1, 30.0),
        ("good", 2, 25.0),
        ("collapse", 3, 0.0),
        ("tampered", 4, 20.0),
    ):
        model = _classifier(folder / f"{key}.onnx", strength, version)
        create_bundle(
            model, folder / key, name="cls", version=version, decoder="classification",
            labels=["a", "b", "c", "d"], golden_images=golden,
        )  # fmt: skip
        out[key] = folder / key
    data = bytearray((out["tampered"] / "model.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: the watcher sees it complete, the store refuses it
    (out["tampered"] / "model.onnx").write_bytes(bytes(data))
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _state(store: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((store / "update-state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _start(
    store: Path, seed: Path, results: Path, config: Path, fault: tuple[str, float] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    launcher = ["-m", "agent.cli"]
    if fault is not None:
        launcher = ["-m", "tests.fixtures.crash_agent", fault[0], f"{fault[1]:.4f}", "--"]
    args = [
        sys.executable, *launcher, "run", "--config", str(config),
        "--state-dir", str(store), "--model", str(seed), "--source", "synthetic:16x16@100,live",
        "--results", str(results), "--control", "off", "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def trial(i: int, bundles: dict[str, Path], tmp: Path, rng: random.Random) -> dict[str, Any]:
    from inference.bundle import open_bundle
    from inference.errors import EdgeAgentError

    targeted = i % 2 == 1
    root = tmp / f"trial{i}"
    store, config = root / "store", root / "agent.toml"
    root.mkdir(parents=True)
    config.write_text("[probation]\nframes = 20\n")
    first, second = root / "first.jsonl", root / "second.jsonl"
    fault: tuple[str, float] | None = None
    if targeted:
        target, kind = TARGETS[(i // 2) % len(TARGETS)]
        if target in SHORT_STEPS:
            delay = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, SHORT_STEP_S)
        else:
            delay = rng.uniform(0.0, INSIDE_STEP_S)
        fault = (f"after:{target}", delay)
        row: dict[str, Any] = {
            "trial": i,
            "candidate": kind,
            "target": target,
            "kill_after_s": round(delay, 4),
        }
    else:
        kind = ("good", "collapse", "tampered")[(i // 2) % 3]
        delay = rng.uniform(0.0, KILL_WINDOW_S)
        row = {"trial": i, "candidate": kind, "kill_after_s": round(delay, 3)}
    proc = _start(store, bundles["seed"], first, config, fault)
    try:
        if not _wait(lambda: len(_lines(first)) > 5, 60):
            row["problem"] = "the first run never served"
            return row
        tmp_drop = store / "incoming" / f".{kind}.partial"
        shutil.copytree(bundles[kind], tmp_drop)
        tmp_drop.rename(store / "incoming" / kind)
        if targeted:  # the agent kills itself at the fault point
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                row["note"] = "the fault point was not reached"
        else:  # the kill lands at a random moment after the update started (the watcher debounces)
            _wait(lambda: _state(store).get("phase", "IDLE") != "IDLE", 10)
            time.sleep(delay)
    finally:
        stop_process(proc, signal.SIGKILL)
    row["phase_at_kill"] = _state(store).get("phase", "none")
    t0 = time.monotonic()
    proc = _start(store, bundles["seed"], second, config)
    try:
        settled = _wait(lambda: _state(store).get("phase") == "IDLE" and len(_lines(second)) > 20, 60)
        row["recovery_s"] = round(time.monotonic() - t0, 2)
        if not settled:
            row["problem"] = f"did not settle: phase {_state(store).get('phase')}"
            return row
        try:
            current = open_bundle((store / "current").resolve(), verify=True)
        except EdgeAgentError as err:
            row["problem"] = f"current does not verify: {err}"
            return row
        seen = len(_lines(second))
        _wait(lambda: len(_lines(second)) >= seen + 10, 10)  # results written after it settled
        served = {line.get("version") for line in _lines(second)[-5:]}
        row["serving"] = current.manifest.version
        if served != {current.manifest.version}:
            row["problem"] = f"results from {served}, current is v{current.manifest.version}"
        elif any((store / "staging").iterdir()):
            row["problem"] = "staging/ not empty"
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
    return row


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    n = trials or (QUICK_TRIALS if quick else TRIALS)
    rng = random.Random(20261122)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        bundles = build_bundles(Path(tmp) / "bundles")
        for i in range(n):
            rows.append(trial(i, bundles, Path(tmp), rng))
    bad = [r for r in rows if "problem" in r]
    phases = Counter(r.get("phase_at_kill", "none") for r in rows)
    recov = sorted(r["recovery_s"] for r in rows if "recovery_s" in r)
    return {
        "trials": n,
        "inconsistent": len(bad),
        "problems": bad,
        "phase_at_kill": dict(sorted(phases.items())),
        "serving_after": dict(Counter(str(r.get("serving")) for r in rows)),
        "recovery_s_p50": recov[len(recov) // 2] if recov else None,
        "recovery_s_max": recov[-1] if recov else None,
        "rows": rows,
        "targets": [
            {
                "what": f"SIGKILL at random points of an update, {n} trials: inconsistent states",
                "value": len(bad),
                "target": "0",
                "ok": not bad,
            },
        ],
        "notes": [
            f"crash_trials: {n} trials in {time.perf_counter() - t0:.0f} s; phase on disk at the kill: "
            + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
            + f"; recovery (restart → settled and serving) p50 {recov[len(recov) // 2] if recov else '-'} s"
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.crash_trials", description=__doc__)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.quick, args.trials)
    path = write_json(RESULTS_DIR / f"crash_trials-{result_stem()}.json", result)
    print(json.dumps({k: result[k] for k in ("trials", "inconsistent", "phase_at_kill", "serving_after")}))
    print(path)
    return 0 if result["inconsistent"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

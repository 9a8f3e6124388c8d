"""``edge-agent run`` end to end in a subprocess: results lines, config, bad input, demo, SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest

from tests.fixtures.agent import ROOT, agent_cmd, agent_env, numbered, run_agent, start_agent

KEYS = {"frame", "ts", "model", "version", "latency_ms", "confidence"}
PAYLOADS = {"detections", "classes", "outputs"}


def check_results(stdout: str, n: int) -> list[dict[str, object]]:
    lines = stdout.splitlines()
    assert len(lines) == n, stdout[-2000:]
    records = [json.loads(line) for line in lines]
    for r in records:
        assert set(r) >= KEYS, r
        extra = set(r) - KEYS
        assert len(extra) == 1 and extra <= PAYLOADS, r
    assert [r["frame"] for r in records] == list(range(n))
    return records


def run_50(model: Path | str, tmp_path: Path) -> list[dict[str, object]]:
    res = run_agent(
        ["run", "--model", str(model), "--source", "synthetic:640x480@30", "--max-frames", "50",
         "--results", "-", "--state-dir", str(tmp_path / "state")],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return check_results(res.stdout, 50)


# --------------------------------------------------------------------------- 50 lines, every model kind


def test_50_lines_for_a_bundle(tmp_path: Path, tiny_bundle: Path) -> None:
    records = run_50(tiny_bundle, tmp_path)
    assert records[0]["model"] == "tiny" and records[0]["version"] == 3
    classes = records[0]["classes"]
    assert isinstance(classes, list) and {c["label"] for c in classes} <= {"blue", "green", "red"}


def test_50_lines_for_a_bare_onnx(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    records = run_50(tiny_models["classifier"], tmp_path)
    assert records[0]["model"] == "classifier" and records[0]["version"] == 0
    assert "outputs" in records[0]


def test_50_lines_for_dynamic_input_dims(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    records = run_50(tiny_models["dynamic"], tmp_path)
    assert records[0]["model"] == "dynamic" and "outputs" in records[0]


@pytest.mark.models
def test_50_lines_for_the_blazeface_bundle(tmp_path: Path, zoo_bundle: Callable[[str], Path]) -> None:
    records = run_50(zoo_bundle("blazeface"), tmp_path)
    assert records[0]["model"] == "blazeface" and "detections" in records[0]


@pytest.mark.models
def test_50_lines_for_a_bare_tflite(tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model("blazeface")
    assert path.suffix == ".tflite"
    records = run_50(path, tmp_path)
    assert "outputs" in records[0] and records[0]["version"] == 0


@pytest.mark.models
def test_50_lines_for_a_real_dynamic_onnx(tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    path = zoo_model("ppocr-det")  # PP-OCRv4 det: dynamic height and width
    records = run_50(path, tmp_path)
    assert "outputs" in records[0]


@pytest.mark.models
def test_zoo_name_as_model(tmp_path: Path, zoo_bundle: Callable[[str], Path]) -> None:
    zoo_bundle("ppocr-cls")  # fetched (or skipped) before the subprocess needs it
    records = run_50("ppocr-cls", tmp_path)
    assert records[0]["model"] == "ppocr-cls" and "classes" in records[0]


# --------------------------------------------------------------------------- the demo


@pytest.mark.models
def test_demo_without_a_terminal_logs_plain_lines(
    tmp_path: Path, zoo_bundle: Callable[[str], Path], zoo_image: Callable[[str], object]
) -> None:
    zoo_bundle("blazeface")  # fetched (or skipped when offline) before the subprocess needs them
    zoo_image("astronaut.png")
    res = run_agent(["run", "--max-frames", "30"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert "running the demo (blazeface on demo:faces)" in res.stderr
    assert "done: 30 frames" in res.stderr
    assert "\r" not in res.stderr and "\x1b[" not in res.stderr  # no live line without a terminal
    assert (tmp_path / "xdg-state" / "edge-agent" / "metrics.db").is_file()  # the per-user state folder


# --------------------------------------------------------------------------- config


def test_flags_override_the_config_file(tmp_path: Path, tiny_bundle: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'model = "{tiny_bundle}"\nsource = "synthetic:32x24@30"\nmax_frames = 10\nresults = "out.jsonl"\n'
    )
    res = run_agent(["run", "--config", str(cfg), "--max-frames", "5"], tmp_path)
    assert res.returncode == 0, res.stderr
    check_results((tmp_path / "out.jsonl").read_text(), 5)  # relative to the config file


def test_bad_config_key_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('model = "blazeface"\nframes = 3\n')
    res = run_agent(["run", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert "unknown key 'frames'" in res.stderr and str(cfg) in res.stderr and "max_frames" in res.stderr
    assert "Traceback" not in res.stderr


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('model = "blazeface"\nthreads = 2\n')
    res = run_agent(["config", "check", str(good)], tmp_path)
    assert res.returncode == 0 and f"{good}: ok" in res.stdout and '"threads": 2' in res.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("threads = 'many'\n")
    res = run_agent(["config", "check", str(bad)], tmp_path)
    assert res.returncode == 2 and "'threads'" in res.stderr and "expected an integer" in res.stderr


def test_bad_flag_value_is_a_usage_error(tmp_path: Path) -> None:
    res = run_agent(["run", "--threads", "0", "--source", "synthetic:8x8@1"], tmp_path)
    assert res.returncode == 2 and "--threads" in res.stderr
    res = run_agent(["run", "--runtime", "tensorflow"], tmp_path)
    assert res.returncode == 2 and "invalid choice" in res.stderr


# --------------------------------------------------------------------------- nothing to serve at start


def test_unopenable_source_exits_1_with_a_message(tmp_path: Path, tiny_bundle: Path) -> None:
    res = run_agent(
        ["run", "--model", str(tiny_bundle), "--source", "/dev/video97", "--state-dir", str(tmp_path / "s")],
        tmp_path,
    )
    assert res.returncode == 1
    assert "cannot open /dev/video97: no such device" in res.stderr and "Traceback" not in res.stderr


def test_missing_model_exits_1_naming_it(tmp_path: Path) -> None:
    res = run_agent(["run", "--model", str(tmp_path / "nope.onnx"), "--source", "synthetic:8x8@1"], tmp_path)
    assert res.returncode == 1
    assert "nope.onnx" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_model_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    res = run_agent(["run", "--model", str(bad), "--source", "synthetic:8x8@1"], tmp_path)
    assert res.returncode == 1
    assert "corrupt.onnx" in res.stderr and "Traceback" not in res.stderr


def test_model_without_source_is_a_config_error(tmp_path: Path, tiny_bundle: Path) -> None:
    res = run_agent(["run", "--model", str(tiny_bundle)], tmp_path)
    assert res.returncode == 2 and "--source" in res.stderr


# --------------------------------------------------------------------------- sources through the CLI


def test_loop_replays_a_folder(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), numbered(i * 50, (24, 32)))
    res = run_agent(
        ["run", "--model", str(tiny_bundle), "--source", str(folder), "--loop", "--max-frames", "7",
         "--results", "-", "--state-dir", str(tmp_path / "s")],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    check_results(res.stdout, 7)
    res = run_agent(
        ["run", "--model", str(tiny_bundle), "--source", str(folder), "--results", "-",
         "--state-dir", str(tmp_path / "s")],
        tmp_path,
    )  # fmt: skip
    assert res.returncode == 0
    check_results(res.stdout, 3)  # without --loop the folder ends the run


def test_closed_stdout_ends_the_run_quietly(tmp_path: Path, tiny_bundle: Path) -> None:
    proc = subprocess.Popen(
        agent_cmd("run", "--model", str(tiny_bundle), "--source", "synthetic:32x24@30", "--results", "-",
                  "--state-dir", str(tmp_path / "s")),
        cwd=ROOT, env=agent_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(3):
        json.loads(proc.stdout.readline())
    proc.stdout.close()  # like `| head -3`
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err
    assert "Traceback" not in err and "went away" in err


def test_sighup_reloads_live_keys_and_names_the_rest(tmp_path: Path, tiny_bundle: Path) -> None:
    cfg = tmp_path / "agent.toml"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    base = f'model = "{tiny_bundle}"\nsource = "synthetic:32x24@50,live"\nstate_dir = "state"\n'
    cfg.write_text(base + f'results = "{first}"\n')
    proc = start_agent(["run", "--config", str(cfg)], tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (first.exists() and first.read_text().count("\n") >= 3):
            time.sleep(0.05)
        cfg.write_text(base + f'results = "{second}"\nthreads = 2\nlog_level = "debug"\n')
        proc.send_signal(signal.SIGHUP)
        while time.monotonic() < deadline and not (second.exists() and second.read_text().count("\n") >= 3):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "threads changed; restart the agent" in err
    assert "applied" in err and "results=" in err and "log_level='debug'" in err
    a = [json.loads(line)["frame"] for line in first.read_text().splitlines()]
    b = [json.loads(line)["frame"] for line in second.read_text().splitlines()]
    assert a and b and a[-1] < b[0]  # the switch happened between two frames


def test_help_and_no_command(tmp_path: Path) -> None:
    res = run_agent(["run", "--help"], tmp_path)
    assert res.returncode == 0 and "--max-frames" in res.stdout and "--results" in res.stdout
    res = run_agent([], tmp_path)
    assert res.returncode == 2

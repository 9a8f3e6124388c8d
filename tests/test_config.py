"""agent.config: strict TOML, types, flags over the file, relative paths; agent.paths."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    VALID_KEYS,
    Config,
    ProbationConfig,
    apply_overrides,
    changed_keys,
    load_config,
    parse_config,
)
from agent.paths import default_config_path, default_state_dir
from inference.errors import ConfigError
from inference.providers import ProviderSpec


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
model = "blazeface"
source = "/dev/video0"
state_dir = "/var/lib/edge-agent"
max_frames = 100
results = "-"
threads = 2
runtime = "TFLite"
providers = ["CPUExecutionProvider"]
log_level = "DEBUG"
loop = true
models_dir = "/var/lib/edge-agent/models"
control = "127.0.0.1:8470"
swap_policy = "memory"

[probation]
frames = 300
seconds = 60
""",
    )
    cfg = load_config(path)
    assert cfg.model == "blazeface" and cfg.source == "/dev/video0"
    assert cfg.state_dir == Path("/var/lib/edge-agent")
    assert cfg.max_frames == 100 and cfg.threads == 2 and cfg.loop is True
    assert cfg.runtime == "tflite" and cfg.log_level == "debug"
    assert cfg.providers == (ProviderSpec("CPUExecutionProvider"),)
    assert cfg.probation == ProbationConfig(frames=300, seconds=60.0)
    assert cfg.swap_policy == "memory" and cfg.control == "127.0.0.1:8470"


def test_unknown_key_names_key_file_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'modle = "blazeface"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "'modle'" in text and str(path) in text
    for key in ("model", "source", "max_frames"):
        assert key in text


def test_dashed_key_is_unknown_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="underscores"):
        load_config(write(tmp_path, "max-frames = 3\n"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('threads = "two"', "threads"),
        ("threads = 0", "threads"),
        ("max_frames = true", "max_frames"),
        ('loop = "yes"', "loop"),
        ('runtime = "tensorflow"', "runtime"),
        ('log_level = "loud"', "log_level"),
        ("model = 3", "model"),
        ("providers = [1, 2]", "providers"),
        ('swap_policy = "fast"', "swap_policy"),
        ("probation = 5", "probation"),
    ],
)
def test_wrong_types_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert repr(key) in str(err.value) and str(path) in str(err.value)


def test_unknown_probation_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'frame'.*valid keys in \[probation\]"):
        load_config(write(tmp_path, "[probation]\nframe = 3\n"))


def test_missing_file_bad_toml_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "model = \n"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'model = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(bad)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(b"x")
    path = write(
        tmp_path,
        'model = "models/m.onnx"\nstate_dir = "state"\n'
        'results = "out/results.jsonl"\nsource = "synthetic:64x48@5"\n',
    )
    cfg = load_config(path)
    assert cfg.model == str(tmp_path / "models" / "m.onnx")
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.results == str(tmp_path / "out" / "results.jsonl")
    assert cfg.source == "synthetic:64x48@5"  # not a file: left alone
    assert load_config(write(tmp_path, 'model = "blazeface"\nresults = "-"\n')).model == "blazeface"


def test_flags_override_the_file_and_are_checked() -> None:
    base = parse_config({"model": "a", "threads": 2}, "test")
    cfg = apply_overrides(base, {"model": "b", "threads": None, "loop": True, "state_dir": "/tmp/x"})
    assert cfg.model == "b" and cfg.threads == 2 and cfg.loop is True and cfg.state_dir == Path("/tmp/x")
    with pytest.raises(ConfigError, match="--threads"):
        apply_overrides(base, {"threads": 0})
    assert changed_keys(base, cfg) == ["model", "state_dir", "loop"]


def test_every_field_is_a_valid_key_and_to_dict_round_trips() -> None:
    cfg = Config(model="m", state_dir=Path("/s"), probation=ProbationConfig(frames=5))
    assert set(VALID_KEYS) == set(Config.__dataclass_fields__)
    assert parse_config(cfg.to_dict(), "round trip") == cfg


def test_default_paths() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/edge-agent:/other"}) == Path("/var/lib/edge-agent")
    assert default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/h"}) == Path("/x/edge-agent")
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/edge-agent")
    assert default_config_path({"CONFIGURATION_DIRECTORY": "/etc/edge-agent"}) == Path(
        "/etc/edge-agent/agent.toml"
    )
    assert default_config_path({"HOME": "/h"}) == Path("/h/.config/edge-agent/agent.toml")


def test_the_example_in_docs_deploy_is_a_valid_config() -> None:
    import re

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None
    cfg = parse_config(tomllib.loads(block.group(1)), "docs/deploy.md")
    assert cfg.model == "blazeface" and cfg.source == "/dev/video0" and cfg.probation.frames == 300


# --------------------------------------------------------------------------- strict, single-sourced parsing


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("127.0.0.1:8470", ("127.0.0.1", 8470)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        (":8470", ("127.0.0.1", 8470)),
        ("8470", ("127.0.0.1", 8470)),
        (" 127.0.0.1:8470 ", ("127.0.0.1", 8470)),
        ("unix:/run/edge-agent/control.sock", Path("/run/edge-agent/control.sock")),
        ("off", None),
        ("OFF", None),
    ],
)
def test_parse_control_address_accepts_the_documented_forms(spec: str, want: object) -> None:
    from agent.config import parse_control_address

    assert parse_control_address(spec) == want


@pytest.mark.parametrize(
    "spec",
    [
        "nonsense",
        "",
        "unix:",
        "unix:/" + "x" * 107,  # longer than sockaddr_un.sun_path: bind() would fail at run time
        "127.0.0.1:",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:8_470",
        "127.0.0.1:+80",
        "127.0.0.1:８０",  # fullwidth digits: int() takes them, a socket does not
        "host name:80",
        "[::1]:8470",
        "999.1.1.1:80",
    ],
)
def test_parse_control_address_rejects_what_the_daemon_cannot_serve(spec: str) -> None:
    from agent.config import parse_control_address

    with pytest.raises(ConfigError, match="control address"):
        parse_control_address(spec)


def test_control_is_checked_fully_when_the_file_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, 'control = "nonsense"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "'control'" in text and "HOST:PORT" in text and "unix:/path" in text
    assert load_config(write(tmp_path, 'control = "Off"\n')).control == "off"  # what the daemon compares
    assert load_config(write(tmp_path, "control = 8470\n")).control == "8470"
    with pytest.raises(ConfigError, match="--control"):
        apply_overrides(Config(), {"control": "unix:"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('threads = "4"', "threads"),
        ('max_frames = "10"', "max_frames"),
        ('max_frames = " 10"', "max_frames"),
        ("threads = 2.0", "threads"),
        ('[probation]\nframes = "300"', "frames"),
    ],
)
def test_integers_must_be_toml_integers(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match="expected an integer") as err:
        load_config(path)
    assert repr(key) in str(err.value) or f".{key}" in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "seconds = nan",
        "seconds = inf",
        "max_error_rate = 1.5",
        "min_confidence_ratio = -0.1",
        "min_confidence_ratio = 2",
    ],
)
def test_probation_numbers_are_finite_and_rates_within_0_1(tmp_path: Path, text: str) -> None:
    # the same bounds a bundle manifest's probation section has (inference.bundle)
    with pytest.raises(ConfigError, match="probation"):
        load_config(write(tmp_path, f"[probation]\n{text}\n"))
    assert load_config(write(tmp_path, "[probation]\nmax_error_rate = 1\nseconds = 0.5\n")).probation == (
        ProbationConfig(seconds=0.5, max_error_rate=1.0)
    )


# `config check` and `run` on the same file: the same verdict, the same message, exit code 2.
# Each config is a runnable one (tiny ONNX model, synthetic source, 3 frames) with one bad line.
BAD_LINES = [
    'control = "nonsense"',
    'control = "unix:"',
    'control = "127.0.0.1:99999"',
    'threads = "4"',
    'max_frames = "3"',
    "threads = 0",
    'runtime = "tensorflow"',
    '[probation]\nframes = "300"',
    "[probation]\nseconds = nan",
    "[probation]\nmax_error_rate = 1.5",
]


def _runnable(tmp_path: Path, model: Path, extra: str, *, source: bool = True) -> Path:
    head = f'model = "{model}"\nstate_dir = "{tmp_path / "state"}"\nmax_frames = 3\n'
    if source:
        head += 'source = "synthetic:16x16@30"\n'
    if "max_frames" in extra:
        head = head.replace("max_frames = 3\n", "")
    return write(tmp_path, head + extra + "\n")


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``edge-agent ARGV`` in this process: the exit code and its ``edge-agent: error:`` lines."""
    import logging

    from agent.cli import main

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        code = main(argv)
    finally:  # `run` installs its log handler on the root logger (on the captured stderr)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("edge-agent: error:")]


@pytest.mark.parametrize("bad", BAD_LINES)
def test_config_check_and_run_reject_the_same_configs_alike(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = _runnable(tmp_path, tiny_models["classifier"], bad)
    check_code, check_err = _main(["config", "check", str(path)], capsys)
    run_code, run_err = _main(["run", "--config", str(path)], capsys)
    assert (check_code, run_code) == (2, 2), (check_err, run_err)
    assert check_err == run_err and len(check_err) == 1 and str(path) in check_err[0]


def test_config_check_rejects_a_file_that_run_cannot_complete(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # a bare model file and no source: `run --config` (what the systemd unit does) refuses it
    path = _runnable(tmp_path, tiny_models["classifier"], "", source=False)
    check_code, check_err = _main(["config", "check", str(path)], capsys)
    run_code, run_err = _main(["run", "--config", str(path)], capsys)
    assert (check_code, run_code) == (2, 2), (check_err, run_err)
    assert check_err == run_err and "no source given" in check_err[0]


def test_config_check_and_run_accept_the_same_good_config(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _runnable(tmp_path, tiny_models["classifier"], 'control = "off"\nthreads = 1')
    assert _main(["config", "check", str(path)], capsys) == (0, [])
    assert _main(["run", "--config", str(path)], capsys) == (0, [])


def test_a_bad_control_flag_is_rejected_before_anything_runs(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = _runnable(tmp_path, tiny_models["classifier"], "")
    code, err = _main(["run", "--config", str(path), "--control", "nonsense"], capsys)
    assert code == 2 and len(err) == 1 and "--control" in err[0] and "nonsense" in err[0]


def test_probation_deadline_must_leave_room_for_the_evidence() -> None:
    with pytest.raises(ConfigError, match="max_seconds"):
        parse_config({"probation": {"seconds": 60, "max_seconds": 30}}, "t")
    with pytest.raises(ConfigError, match="must be > 0"):
        parse_config({"probation": {"max_seconds": 0}}, "t")
    cfg = parse_config({"probation": {"seconds": 30, "max_seconds": 60, "on_thin_evidence": "commit"}}, "t")
    assert cfg.probation.max_seconds == 60 and cfg.probation.on_thin_evidence == "commit"


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"window": "10"}, "at least 30 samples"),
        ({"learn": "20"}, "learn from 60"),
        ({"learn": "1000000"}, "learn from 60"),
        ({"window": "2d"}, "count .* nor a time|at most 7 days"),
        ({"metrics": "nope"}, "PORT or HOST:PORT"),
        ({"per_frame": "every"}, "per_frame"),
    ],
)
def test_monitoring_values_that_cannot_work_are_refused(table: dict[str, Any], match: str) -> None:
    from agent.config import parse_config

    with pytest.raises(ConfigError, match=match):
        parse_config({"monitoring": table}, "agent.toml")


def test_monitoring_flags_set_the_table() -> None:
    from agent.config import Config, apply_overrides

    cfg = apply_overrides(Config(), {"window": "5m", "metrics": "9464"})
    assert cfg.monitoring.window == "300s" and cfg.monitoring.metrics == "9464"


# -- execution providers -------------------------------------------------------------------


def test_providers_names_aliases_and_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
threads = 2

[[providers]]
name = "tensorrt"
options = { trt_fp16_enable = true, device_id = 0 }

[[providers]]
name = "CUDAExecutionProvider"

[[providers]]
name = "cpu"
""",
    )
    cfg = load_config(path)
    assert cfg.providers == (
        ProviderSpec("TensorrtExecutionProvider", {"trt_fp16_enable": True, "device_id": 0}),
        ProviderSpec("CUDAExecutionProvider"),
        ProviderSpec("CPUExecutionProvider"),
    )
    assert cfg.to_dict()["providers"] == [
        {"name": "TensorrtExecutionProvider", "options": {"trt_fp16_enable": True, "device_id": 0}},
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert parse_config(cfg.to_dict(), "round trip").providers == cfg.providers


def test_providers_plain_list_and_case_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'providers = ["xnnpack", "TensorRTExecutionProvider", "CPU"]\n'))
    assert [p.name for p in cfg.providers] == [
        "XnnpackExecutionProvider",
        "TensorrtExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert apply_overrides(Config(), {"providers": "cuda,cpu"}).providers == (
        ProviderSpec("CUDAExecutionProvider"),
        ProviderSpec("CPUExecutionProvider"),
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[providers]]\nname = "cuda"\ndevice = 0\n', "unknown key 'device'"),
        ("[[providers]]\noptions = { a = 1 }\n", "needs a name"),
        ('[[providers]]\nname = "cuda"\noptions = { device_id = [0] }\n', "option 'device_id'"),
        ('[[providers]]\nname = "cuda"\noptions = 3\n', "options must be a table"),
        ('providers = ["gpu"]\n', "'gpu' is not an execution provider"),
        ("providers = []\n", "expected a list of execution providers"),
    ],
)
def test_bad_provider_entries_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert needle in str(err.value) and "providers" in str(err.value)


def test_the_provider_examples_in_the_deploy_guide_parse(tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "providers" in b]
    names = [[p.name for p in load_config(write(tmp_path, b)).providers] for b in blocks]
    assert ["XnnpackExecutionProvider", "CPUExecutionProvider"] in names
    assert ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"] in names
    assert ["QNNExecutionProvider", "CPUExecutionProvider"] in names

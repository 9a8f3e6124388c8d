"""agent.config: strict TOML, types, flags over the file, relative paths; agent.paths."""

from __future__ import annotations

import sys
from pathlib import Path

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
    assert cfg.providers == ("CPUExecutionProvider",)
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

"""Fuzzed untrusted input (DESIGN §9): manifests, the update state file and control requests.

Every bad input is rejected with the project's own error and a reason; nothing else escapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.bundle import TOP_FIELDS, parse_manifest
from inference.errors import BundleError
from ota.update_machine import State, UpdateMachine
from tests.fixtures.ota import manifest_for, tiny_onnx

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
VALID = manifest_for("det", 3, tiny_onnx("fuzz"))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parse(data: bytes) -> None:
    try:
        parse_manifest(data, "fuzz/manifest.json")
    except BundleError as err:
        assert "fuzz/manifest.json" in str(err)  # the reason names the file


@FUZZ
@given(st.binary(max_size=512))
def test_manifest_random_bytes(data: bytes) -> None:
    _parse(data)


@FUZZ
@given(JSON)
def test_manifest_random_json(obj: Any) -> None:
    _parse(json.dumps(obj).encode())


@FUZZ
@given(st.sampled_from(sorted(VALID)), JSON)
def test_manifest_one_field_replaced(key: str, value: Any) -> None:
    """A valid manifest with one field set to anything: accepted, or rejected with a reason."""
    m = dict(VALID)
    m[key] = value
    _parse(json.dumps(m).encode())


@FUZZ
@given(st.text(max_size=12), JSON)
def test_manifest_extra_key(key: str, value: Any) -> None:
    m = dict(VALID)
    if key in m or key in TOP_FIELDS:  # a known optional field is not an extra key
        return
    m[key] = value
    with pytest.raises(BundleError, match="unknown key"):
        parse_manifest(json.dumps(m).encode(), "fuzz/manifest.json")


@FUZZ
@given(JSON)
def test_update_state_file_garbage_starts_idle(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "update-state.json"
    path.write_text(json.dumps(obj))
    machine = UpdateMachine(path)  # a corrupt file is kept aside; the machine starts IDLE
    assert machine.state is State.IDLE or isinstance(obj, dict)
    path.unlink(missing_ok=True)
    (tmp_path / "update-state.json.corrupt").unlink(missing_ok=True)


FUZZ_TOKEN = "fuzz-token-0123456789abcdef"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=256), st.sampled_from(["/models/activate", "/models/pin", "/models/rollback"]))
def test_control_bodies(body: bytes, path: str) -> None:
    """Any body to any endpoint: a JSON answer with a status, never a dropped connection."""
    from agent.control import ControlServer
    from tests.test_control import FakeController

    global _SERVER
    if _SERVER is None:
        _SERVER = ControlServer(("127.0.0.1", 0), FakeController(), token=FUZZ_TOKEN).start()
    headers = {"Authorization": f"Bearer {FUZZ_TOKEN}"}
    resp = httpx.post(f"http://{_SERVER.address}{path}", content=body, headers=headers, timeout=10)
    assert resp.status_code in (200, 400, 404, 409, 413)
    assert isinstance(resp.json(), dict)


_SERVER: Any = None


def teardown_module() -> None:
    if _SERVER is not None:
        _SERVER.close()


@FUZZ
@given(
    st.sampled_from(["classification", "yolo", "ssd_anchors", "db_text", "raw"]),
    st.dictionaries(
        st.sampled_from(
            [
                "top_k",
                "softmax",
                "version",
                "score_threshold",
                "iou_threshold",
                "max_detections",
                "num_anchors",
                "input_size",
                "strides",
                "thresh",
                "box_thresh",
                "unclip_ratio",
                "max_candidates",
                "score_mode",
                "normalized",
                "bogus",
            ]
        ),
        JSON,
        max_size=4,
    ),
)
def test_decoder_params(name: str, params: dict[str, Any]) -> None:
    """Decoder parameters come from the manifest: anything else than a decoder is a BundleError."""
    from inference.decoders import make_decoder

    try:
        make_decoder(name, params, ["a", "b"])
    except BundleError as err:
        assert str(err)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["shape", "dtype", "layout", "color", "scale", "mean", "std", "resize", "pad"]),
        JSON,
        max_size=5,
    )
)
def test_input_section(section: dict[str, Any]) -> None:
    """A manifest ``input`` section of anything, against a real model input: spec or BundleError."""
    import numpy as np

    from inference.preprocess import parse_input, resolve_input_spec
    from inference.runtime import TensorInfo

    tensor = TensorInfo("image", (1, 3, 16, 16), np.dtype(np.float32))
    try:
        checked = parse_input(section, "fuzz/manifest.json")
        resolve_input_spec(checked, tensor, "fuzz/manifest.json")
    except BundleError as err:
        assert str(err)

"""ota.validation: the gate tells a candidate that fails from a gate that fails.

Errors a model's run or decode raises on bad outputs are the candidate's failure; an error
from the gate's own code (a bug in edge-agent) is reported as an internal error, never as
"the model fails to run". Faults are injected through the policy, the loader and the gate's
helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ota.validation as validation
from inference.errors import BundleError
from inference.model import load_model
from ota.validation import ValidationPolicy, ValidationReport, validate, validate_isolated
from tests.fixtures.hot_swap import frame_image

Make = Callable[..., Path]
FRAMES = [frame_image(9), frame_image(99)]


def _with_decoder(decode: Callable[..., Any]) -> Callable[..., Any]:
    """A loader whose model decodes with ``decode`` (a candidate whose outputs do not decode)."""

    def loader(path: Path, options: Any = None) -> Any:
        model = load_model(path, options)
        model.decoder = decode  # type: ignore[assignment]
        return model

    return loader


def _raises(exc: BaseException) -> Callable[..., Any]:
    def fn(*_args: Any, **_kw: Any) -> Any:
        raise exc

    return fn


def _wrong_shape_float(outputs: list[Any], _t: Any) -> Any:
    return float(outputs[0])  # a (1, C) output where a scalar was expected: TypeError in numpy


def _errstate_divide(outputs: list[Any], _t: Any) -> Any:
    with np.errstate(all="raise"):
        return outputs[0] / np.zeros_like(outputs[0])  # FloatingPointError


# --------------------------------------------------------------------------- the gate's own bugs


def test_a_type_error_in_the_gate_is_an_internal_error_not_a_model_failure(classifier_bundle: Make) -> None:
    # warmup_runs=None: range(None) in the latency check, the gate's code, not the model's
    report = validate(classifier_bundle(2), FRAMES, ValidationPolicy(warmup_runs=None))  # type: ignore[arg-type]
    assert not report.ok and report.internal
    assert report.reason.startswith("internal error in the validation gate"), report.reason
    assert "TypeError" in report.reason and "not the candidate" in report.reason
    assert "fails to run" not in report.reason
    assert report.checks[-1]["check"] == "internal" and report.checks[-1]["ok"] is False
    assert [c["check"] for c in report.checks[:3]] == ["load", "golden", "live"]  # what did run, ran


def test_an_attribute_error_in_a_gate_helper_is_internal(
    classifier_bundle: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        validation, "_finite", _raises(AttributeError("'list' object has no attribute 'dtype'"))
    )
    report = validate(classifier_bundle(2), FRAMES)
    assert not report.ok and report.internal and "AttributeError" in report.reason
    assert report.reason.startswith("internal error in the validation gate")


def test_a_loader_bug_is_internal_but_an_engine_error_is_a_load_failure(classifier_bundle: Make) -> None:
    bundle = classifier_bundle(2)
    report = validate(bundle, FRAMES, loader=_raises(TypeError("load_model() got an unexpected keyword")))
    assert not report.ok and report.internal and "TypeError" in report.reason
    report = validate(bundle, FRAMES, loader=_raises(RuntimeError("engine: unsupported op")))
    assert not report.ok and not report.internal
    assert report.reason == "does not load: RuntimeError: engine: unsupported op"
    report = validate(bundle, FRAMES, loader=_raises(BundleError("model.onnx is truncated")))
    assert report.reason == "does not load: model.onnx is truncated" and not report.internal


def test_the_internal_label_survives_the_child_process(classifier_bundle: Make) -> None:
    policy = ValidationPolicy(warmup_runs=None)  # type: ignore[arg-type]
    report = validate_isolated(classifier_bundle(2), FRAMES, policy)
    assert not report.ok and report.internal, report.reason
    assert report.reason.startswith("internal error in the validation gate")
    back = ValidationReport.from_json(report.to_json())
    assert back == report
    assert ValidationReport.from_json({"ok": False, "reason": "x"}).internal is False  # older children


# --------------------------------------------------------------------------- the candidate's failures


@pytest.mark.parametrize(
    ("decode", "name"),
    [
        (_raises(ValueError("cannot reshape array of size 3 into shape (4,)")), "ValueError"),
        (_raises(IndexError("index 7 is out of bounds for axis 0 with size 3")), "IndexError"),
        (_errstate_divide, "FloatingPointError"),
        (_wrong_shape_float, "TypeError"),
        (_raises(ZeroDivisionError("float division by zero")), "ZeroDivisionError"),
    ],
)
def test_a_decoder_choking_on_the_outputs_fails_the_candidate(
    classifier_bundle: Make, decode: Callable[..., Any], name: str
) -> None:
    report = validate(classifier_bundle(2), FRAMES, loader=_with_decoder(decode))
    assert not report.ok and not report.internal
    assert report.reason.startswith(f"live frame 0: outputs do not decode ({name}"), report.reason
    assert report.checks[-1]["check"] == "live"


def test_a_runtime_error_while_running_fails_the_candidate(classifier_bundle: Make) -> None:
    def loader(path: Path, options: Any = None) -> Any:
        model = load_model(path, options)
        model.runtime.run = _raises(BundleError("inference failed (Fail: bad node)"))  # type: ignore[method-assign]
        return model

    report = validate(classifier_bundle(2), FRAMES, loader=loader)
    assert not report.ok and not report.internal
    assert report.checks[-1]["check"] == "golden" and "inference failed" in report.reason


def test_a_good_candidate_still_passes(classifier_bundle: Make) -> None:
    report = validate(classifier_bundle(2), FRAMES)
    assert report.ok and not report.internal, report.reason
    assert [c["check"] for c in report.checks] == ["load", "golden", "live", "latency"]

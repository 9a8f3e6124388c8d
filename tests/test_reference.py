"""monitoring.reference: bins with support on ties and discrete metrics, bootstrapped thresholds that
behave as the theory says (PSI/JS ~1/n, shifts ~1/sqrt(n), family-wise level), the block length,
the JSON round trip, and a strict parser that refuses every malformed or ill-fitting profile with
its reason (and, fuzzed, never fails any other way)."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.errors import BundleError
from monitoring import reference as ref_mod
from monitoring import scores
from monitoring.drift import DriftDetector
from monitoring.frame_stats import IMAGE_METRICS, Sample
from monitoring.reference import (
    WINDOW_SIZES,
    ReferenceError,
    ReferenceProfile,
    build_reference,
    family_thresholds,
    parse_reference,
    replicate_scores,
)
from monitoring.window import Window
from tests.fixtures.drift_streams import synthetic


@pytest.fixture(scope="module")
def stream() -> list[Sample]:
    return synthetic(np.random.default_rng(5), 2000)


@pytest.fixture(scope="module")
def profile(stream: list[Sample]) -> ReferenceProfile:
    return build_reference(stream)


@pytest.fixture(scope="module")
def classifier_profile() -> ReferenceProfile:
    return build_reference(synthetic(np.random.default_rng(6), 800, kind="classes"), window_sizes=(30, 60))


# ---------------------------------------------------------------------------------------------- building


def test_a_detector_profile_has_every_metric_classes_and_thresholds_per_size(
    profile: ReferenceProfile,
) -> None:
    assert profile.kind == "detections" and profile.origin == "bundle" and profile.samples == 2000
    assert list(profile.metrics) == [*IMAGE_METRICS, "confidence", "detections"]
    assert set(profile.class_priors) == {"face", "person"}
    assert profile.class_priors["face"] == pytest.approx(0.75, abs=0.03)
    assert set(profile.class_conf) == set(profile.class_rate) == {"face", "person"}
    assert profile.class_conf["face"][0] == pytest.approx(0.8, abs=0.01)
    assert profile.class_rate["face"][0] == pytest.approx(0.75 * 1.3, rel=0.15)
    assert profile.sizes == WINDOW_SIZES
    for n in WINDOW_SIZES:
        assert set(profile.thresholds[n]) == set(profile.drift_keys()) | set(profile.decay_keys())
        assert all(math.isfinite(t) and t >= 0 for t in profile.thresholds[n].values())
    assert "classes:linf" in profile.drift_keys() and "rate:face:drop" in profile.decay_keys()
    assert profile.decay_ready and profile.decay_note is None


def test_a_detector_profile_measures_confidence_decay_over_the_samples_with_a_box(
    profile: ReferenceProfile, stream: list[Sample]
) -> None:
    boxed = [s.values["confidence"] for s in stream if s.values["detections"] >= 1]
    assert 0.5 * len(stream) < len(boxed) < len(stream)  # the stream has empty frames (confidence 0)
    assert profile.detected_conf is not None
    mean, std = profile.detected_conf
    assert mean == pytest.approx(np.mean(boxed)) and std == pytest.approx(np.std(boxed))
    assert mean > profile.metrics["confidence"].mean + 0.1  # the mean over every sample counts the zeros
    assert all("confidence:drop" in t for t in profile.thresholds.values())
    assert profile.to_json()["detected_conf"] == [mean, std]


def test_a_detector_reference_with_too_few_boxes_has_no_confidence_decay_and_says_so() -> None:
    samples = synthetic(np.random.default_rng(4), 400, empty=0.96)
    assert sum(s.values["detections"] >= 1 for s in samples) < ref_mod.MIN_DECAY_COUNT
    p = build_reference(samples, window_sizes=(30,), replicates=1000, alpha=0.005)
    assert p.detected_conf is None and "confidence" not in p.decay_metrics()
    assert not p.decay_ready and p.class_rate == {}
    note = p.decay_note or ""
    assert "no confidence decay" in note and "no detection-rate decay" in note
    assert "detected_conf" not in p.to_json()
    assert parse_reference(p.to_json()) == p


def test_decay_ready_per_kind(profile: ReferenceProfile, classifier_profile: ReferenceProfile) -> None:
    assert classifier_profile.decay_ready and classifier_profile.detected_conf is None
    doc = valid(classifier_profile)
    for t in doc["thresholds"].values():
        del t["confidence:drop"]
    p = parse_reference(doc)  # accepted: a reference without decay thresholds is reported, not refused
    assert not p.decay_ready and "no confidence decay" in (p.decay_note or "")
    doc = valid(profile)
    for t in doc["thresholds"].values():
        for k in [k for k in t if k.startswith("rate:")]:
            del t[k]
    p = parse_reference(doc)
    assert (
        not p.decay_ready
        and (p.decay_note or "").count("decay") == 1
        and "detection-rate" in (p.decay_note or "")
    )


def test_every_bin_has_support_on_ties_and_discrete_metrics(
    profile: ReferenceProfile, stream: list[Sample]
) -> None:
    for metric, m in profile.metrics.items():
        x = np.array([s.values[metric] for s in stream])
        counts = m.counts(x)
        assert list(m.edges) == sorted(set(m.edges)), metric
        assert 2 <= m.bins <= 11, metric
        assert counts.sum() == len(x)
        if m.constant:
            continue
        assert counts.min() >= ref_mod.MIN_BIN_SHARE * len(x), metric  # no empty or near-empty bin
        assert sum(m.proportions) == pytest.approx(1.0)
        assert all(e in set(x) for e in m.edges), metric  # edges are values the reference holds
    dark = profile.metrics["dark_fraction"]
    assert dark.edges[0] == 0.0 and dark.proportions[0] > 0.5  # the mass at zero is one bin
    detections = profile.metrics["detections"]
    assert all(float(e).is_integer() for e in detections.edges)
    assert profile.metrics["brightness"].bins == ref_mod.BINS


def test_a_constant_metric_is_scored_by_its_mean_shift_only() -> None:
    samples = synthetic(np.random.default_rng(1), 300)
    for s in samples:
        s.values["bright_fraction"] = 0.0
    p = build_reference(samples, window_sizes=(30,), replicates=1000, alpha=0.005)
    bright = p.metrics["bright_fraction"]
    assert bright.constant and bright.edges == (0.0,) and bright.std == ref_mod.STD_FLOOR["bright_fraction"]
    assert "bright_fraction:psi" not in p.thresholds[30] and "bright_fraction:mean_shift" in p.thresholds[30]
    assert p.thresholds[30]["bright_fraction:mean_shift"] >= 1.0  # at least one resolution step
    parse_reference(json.loads(json.dumps(p.to_json())))  # and it still parses


def test_thresholds_shrink_with_the_window_as_theory_says(profile: ReferenceProfile) -> None:
    t30, t300 = profile.thresholds[30], profile.thresholds[300]
    for metric in ("brightness", "contrast", "saturation"):
        # PSI and JS fall about as 1/n (with a floor from the reference's own noise), shifts as 1/sqrt(n)
        assert 3 < t30[f"{metric}:psi"] / t300[f"{metric}:psi"] < 12
        assert 1.5 < t30[f"{metric}:mean_shift"] / t300[f"{metric}:mean_shift"] < 4.5
        assert t30[f"{metric}:js"] <= 1.0  # bits: JS is at most 1


def test_thresholds_for_interpolates_on_a_log_log_scale(profile: ReferenceProfile) -> None:
    assert profile.thresholds_for(29) is None
    assert profile.thresholds_for(30) == profile.thresholds[30]
    mid = profile.thresholds_for(round(math.sqrt(30 * 60)))  # 42: between 30 and 60
    assert mid is not None
    for k, t in mid.items():
        lo, hi = profile.thresholds[30][k], profile.thresholds[60][k]
        assert min(lo, hi) - 1e-12 <= t <= max(lo, hi) + 1e-12
        if lo > 0 and hi > 0:
            f = math.log(42 / 30) / math.log(2)
            assert t == pytest.approx(lo ** (1 - f) * hi**f)
    assert profile.thresholds_for(5000) == profile.thresholds[300]  # beyond: the largest size's


def test_the_family_wise_level_holds_on_fresh_bootstrap_windows() -> None:
    rng = np.random.default_rng(0)
    cols = {f"s{j}": np.abs(rng.standard_normal(4000)) for j in range(20)}
    cols["shared"] = cols["s0"] * 1.01  # a score that moves with another costs nothing extra
    cols["flat"] = np.zeros(4000)  # a constant score never exceeds its threshold
    cols["partial"] = np.where(rng.random(4000) < 0.5, np.nan, np.abs(rng.standard_normal(4000)))
    t = family_thresholds(cols, 0.01)
    fresh = {k: np.abs(rng.standard_normal(200_000)) for k in cols if k.startswith("s")}
    anywhere = np.zeros(200_000, bool)
    for k, v in fresh.items():
        anywhere |= v > t[k]
    assert 0.004 < anywhere.mean() < 0.02  # ~alpha out of sample (the tails are fitted, not counted)
    assert t["flat"] == 0.0
    assert np.mean(cols["s3"] > t["s3"]) < 0.002  # per score far stricter than alpha: it is a family


def test_independent_samples_get_block_one_and_autocorrelated_ones_longer_blocks() -> None:
    rng = np.random.default_rng(3)
    assert ref_mod._politis_white(rng.standard_normal(2000)) == 1
    ar = synthetic(rng, 2000, phi=0.8)
    assert ref_mod._politis_white(np.array([s.values["brightness"] for s in ar])) >= 10
    iid = synthetic(rng, 2000, phi=0.0)
    assert build_reference(iid, replicates=500, alpha=0.01).block <= 3


def test_building_is_fast_and_deterministic(stream: list[Sample], profile: ReferenceProfile) -> None:
    t0 = time.perf_counter()
    again = build_reference(stream)
    elapsed = time.perf_counter() - t0
    sizes, reps = len(WINDOW_SIZES), ref_mod.REPLICATES
    print(f"\nbuild_reference: {len(stream)} samples, {sizes} sizes, B={reps}: {elapsed:.2f} s")
    assert elapsed < 15  # loose for a loaded machine; about 1 s on a desktop core
    assert again == profile  # the default seed: the same frames make the same manifest
    other = build_reference(stream, rng=np.random.default_rng(1))
    assert other.metrics == profile.metrics and other.thresholds != profile.thresholds


def test_windows_larger_than_the_reference_get_no_thresholds() -> None:
    p = build_reference(synthetic(np.random.default_rng(2), 100), replicates=500, alpha=0.01)
    assert p.sizes == (30, 60)


def test_too_few_samples_or_missing_metrics_are_refused_with_a_reason() -> None:
    with pytest.raises(ReferenceError) as err:
        build_reference(synthetic(np.random.default_rng(2), 40))
    assert err.value.reason == "too_few_samples" and "at least 60" in str(err.value)
    samples = synthetic(np.random.default_rng(2), 200)
    for s in samples[:50]:
        del s.values["brightness"]
    with pytest.raises(ReferenceError) as err:
        build_reference(samples)
    assert err.value.reason == "missing_metrics" and "brightness" in str(err.value)
    assert isinstance(err.value, BundleError)


def test_a_classifier_profile_has_margin_entropy_and_class_confidence(
    classifier_profile: ReferenceProfile,
) -> None:
    p = classifier_profile
    assert p.kind == "classes" and {"margin", "entropy"} <= set(p.metrics) and "detections" not in p.metrics
    assert p.class_priors["cat"] == pytest.approx(0.55, abs=0.05)
    assert set(p.class_conf) == {"cat", "dog", "fox"} and p.class_rate == {}
    assert p.sizes == (30, 60)


def test_the_bootstrap_and_the_detector_compute_the_same_scores(
    stream: list[Sample], profile: ReferenceProfile
) -> None:
    """The replicate scores (count vectors times the feature matrix) equal the detector's on a real window,
    so the thresholds are calibrated for exactly the statistic the detector computes."""
    table = {
        m: np.array([s.values.get(m, np.nan) for s in stream]) for m in ref_mod._applicable(profile.kind)
    }
    present = {m: np.isfinite(x) for m, x in table.items()}
    labels = ref_mod._Labels.of(stream, profile.kind)
    blocks = dict.fromkeys([*profile.metrics, ref_mod.CLASSES, ref_mod.DETECTED_CONF], 1)
    design = ref_mod._Design(profile, table, present, labels, blocks)
    weights = np.zeros((1, len(stream)))
    weights[0, 700:760] = 1.0
    drift, decay = replicate_scores(
        profile, design.cols, np.ones((1, len(stream))) @ design.matrix, weights @ design.matrix, 2000, 60
    )
    window = Window(0, stream[700].ts)
    for s in stream[700:760]:
        window.add(s)
    verdict = DriftDetector(profile, model="m", version=1).judge(window)
    got = {f"{s.metric}:{s.score}": s.value for s in verdict.scores}
    expected = {k: float(v[0]) for k, v in {**drift, **decay}.items() if np.isfinite(v[0])}
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


# ---------------------------------------------------------------------------------------------- JSON


def test_the_json_round_trips_exactly(
    profile: ReferenceProfile, classifier_profile: ReferenceProfile
) -> None:
    for p in (profile, classifier_profile):
        doc = p.to_json()
        assert doc["schema"] == 1 and doc["origin"] == "bundle" and doc["samples"] == p.samples
        assert doc["block"] == p.block and doc["alpha"] == ref_mod.ALPHA
        assert parse_reference(json.loads(json.dumps(doc))) == p
    learned = build_reference(
        synthetic(np.random.default_rng(9), 200), origin="learned", replicates=500, alpha=0.01
    )
    assert parse_reference(learned.to_json(), labels=["face", "person", "car"]).origin == "learned"


def valid(profile: ReferenceProfile) -> dict[str, Any]:
    return json.loads(json.dumps(profile.to_json()))


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc)
    *parents, last = path.split("/")
    node: Any = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


DELETE = object()

MALFORMED: list[tuple[str, Any, str]] = [
    ("schema", 2, "schema 2 is not supported"),
    ("schema", True, "schema must be an integer"),
    ("schema", DELETE, "missing: ['schema']"),
    ("extra", 1, "unknown: ['extra']"),
    ("origin", "guessed", "origin must be one of"),
    ("kind", "boxes", "kind must be one of"),
    ("samples", 0, "samples must be an integer"),
    ("samples", 2.5, "samples must be an integer"),
    ("block", 10**9, "block must be an integer"),
    ("alpha", 0.9, "alpha must be a finite number"),
    ("alpha", "0.001", "alpha must be a number"),
    ("replicates", -1, "replicates must be an integer"),
    ("metrics", [], "metrics must be an object"),
    ("metrics/luminance", {"edges": [1], "proportions": [0.5, 0.5], "mean": 0, "std": 1}, "unknown metric"),
    ("metrics/brightness/edges", [], "list of 1..31 numbers"),
    ("metrics/brightness/edges", list(range(40)), "list of 1..31 numbers"),
    ("metrics/brightness/edges/1", -5.0, "strictly increasing"),
    ("metrics/brightness/edges/0", float("nan"), "finite number"),
    ("metrics/brightness/edges/0", float("inf"), "finite number"),
    ("metrics/brightness/edges/0", 1e300, "finite number in"),
    ("metrics/brightness/edges/0", None, "must be a number"),
    ("metrics/brightness/proportions/0", 0.5, "sum to 1"),
    ("metrics/brightness/proportions/0", -0.1, "in [0, 1]"),
    ("metrics/brightness/proportions", [1.0], "list of"),
    ("metrics/brightness/std", 0.0, "std must be a finite number"),
    ("metrics/brightness/mean", "128", "must be a number"),
    ("metrics/brightness/extra", 1, "exactly edges, proportions, mean and std"),
    ("class_priors", {"face": 0.9, "person": 0.9}, "sum to at most 1"),
    ("class_priors/face", 1.5, "finite number in [0, 1]"),
    ("class_priors", {"x" * 300: 0.5}, "bad key"),
    ("class_priors", {"x" * 129: 0.5}, "bad label"),
    ("class_priors", {"": 0.5}, "bad label"),
    ("class_conf", {"a\nb": [0.8, 0.1]}, "bad label"),
    ("class_rate", {"\x00": [0.8, 0.1]}, "bad label"),
    ("metrics/margin", {"edges": [0.5], "proportions": [0.5, 0.5], "mean": 0.5, "std": 0.1}, "do not apply"),
    ("detected_conf", [0.8], "list of 2..2 numbers"),
    ("detected_conf", [0.8, 0.0], "detected_conf std must be"),
    ("detected_conf", None, "detected_conf must be a list"),
    ("thresholds/30/" + "k" * (ref_mod.MAX_KEY_LEN + 1), 0.1, "bad key"),
    ("class_priors", {f"c{i}": 0.0001 for i in range(1001)}, "over the limit"),
    ("class_conf/face", [0.8], "list of 2..2 numbers"),
    ("class_conf/face", [0.8, -1.0], "std must be a finite number"),
    ("class_rate/face", [-1.0, 0.5], "mean must be a finite number"),
    ("thresholds", {}, "at least one window size"),
    ("thresholds", {"030": {}}, "not a plain integer"),
    ("thresholds", {"1": {}}, "window size must be an integer"),
    ("thresholds", {str(10**6): {}}, "window size must be an integer"),
    ("thresholds", {str(n): {} for n in range(10, 20)}, "over the limit"),
    ("thresholds/30/brightness:psi", DELETE, "missing: ['brightness:psi']"),
    ("thresholds/30/brightness:kl", 0.1, "unknown: ['brightness:kl']"),
    ("thresholds/30/brightness:psi", -0.1, "finite number in [0,"),
    ("thresholds/30/confidence:dog:drop", 0.1, "unknown: ['confidence:dog:drop']"),
]


@pytest.mark.parametrize(
    ("path", "value", "says"), MALFORMED, ids=[f"{p}={str(v)[:20]}" for p, v, _ in MALFORMED]
)
def test_malformed_profiles_are_refused_with_what_is_wrong(
    profile: ReferenceProfile, path: str, value: Any, says: str
) -> None:
    with pytest.raises(ReferenceError) as err:
        parse_reference(set_path(valid(profile), path, value), where="bundle/manifest.json reference")
    assert err.value.reason == "malformed"
    assert says in str(err.value)
    assert str(err.value).startswith("bundle/manifest.json reference: ")


@pytest.mark.parametrize("obj", [None, [], "reference", 1, 1.5, True])
def test_a_reference_that_is_not_an_object_is_malformed(obj: Any) -> None:
    with pytest.raises(ReferenceError) as err:
        parse_reference(obj)
    assert err.value.reason == "malformed"


def test_optional_scores_may_be_absent(profile: ReferenceProfile) -> None:
    doc = set_path(valid(profile), "thresholds/30/classes:linf", DELETE)
    doc = set_path(doc, "thresholds/30/rate:face:drop", DELETE)
    assert "classes:linf" not in parse_reference(doc).thresholds[30]


def test_a_profile_naming_classes_the_model_lacks_is_wrong_classes(profile: ReferenceProfile) -> None:
    parse_reference(valid(profile), labels=["person", "face"])
    with pytest.raises(ReferenceError) as err:
        parse_reference(valid(profile), labels=["cat", "dog", "face"])
    assert err.value.reason == "wrong_classes" and "'person'" in str(err.value)
    doc = set_path(valid(profile), "class_priors", {"face": 1.0})
    with pytest.raises(ReferenceError) as err:  # the per-class statistics name classes too
        parse_reference(doc, labels=["face"])
    assert err.value.reason == "wrong_classes"
    parse_reference(valid(profile))  # without labels, nothing to check them against


@pytest.mark.parametrize("metric", ["brightness", "sharpness", "saturation", "confidence"])
def test_a_profile_lacking_an_image_metric_or_confidence_is_missing_metrics(
    profile: ReferenceProfile, metric: str
) -> None:
    doc = set_path(valid(profile), f"metrics/{metric}", DELETE)
    for t in doc["thresholds"].values():
        for k in [k for k in t if k.rsplit(":", 1)[0] == metric or k == "confidence:drop"]:
            del t[k]
    with pytest.raises(ReferenceError) as err:
        parse_reference(doc)
    assert err.value.reason == "missing_metrics" and metric in str(err.value)


def test_detector_only_statistics_in_a_classifier_profile_are_malformed(
    classifier_profile: ReferenceProfile,
) -> None:
    for field, value, says in (
        ("detected_conf", [0.8, 0.1], "detected_conf"),
        ("class_rate", {"cat": [0.5, 0.5]}, "class_rate"),
        (
            "metrics/detections",
            {"edges": [1.0], "proportions": [0.5, 0.5], "mean": 1.0, "std": 1.0},
            "'detections'",
        ),
    ):
        with pytest.raises(ReferenceError) as err:
            parse_reference(set_path(valid(classifier_profile), field, value))
        assert (
            err.value.reason == "malformed" and says in str(err.value) and "classes model" in str(err.value)
        )


def test_a_profile_for_another_kind_of_model_is_wrong_kind(
    profile: ReferenceProfile, classifier_profile: ReferenceProfile
) -> None:
    assert parse_reference(valid(profile), kind="detections") == profile
    assert parse_reference(valid(classifier_profile), kind="classes") == classifier_profile
    for doc, kind in (
        (valid(classifier_profile), "detections"),
        (valid(profile), "classes"),
        (valid(profile), "outputs"),
    ):
        with pytest.raises(ReferenceError) as err:
            parse_reference(doc, kind=kind, labels=["face", "person", "cat", "dog", "fox"])
        assert err.value.reason == "wrong_kind" and f"this model's are {kind}" in str(err.value)
    with pytest.raises(ReferenceError) as err:  # a malformed profile is malformed first
        parse_reference(set_path(valid(classifier_profile), "samples", 0), kind="detections")
    assert err.value.reason == "malformed"
    with pytest.raises(ValueError):
        parse_reference(valid(profile), kind="boxes")


def test_a_detector_profile_made_before_detected_conf_parses_without_confidence_decay(
    profile: ReferenceProfile,
) -> None:
    """Its confidence:drop threshold is of the mean over every sample, which the detector no longer
    computes: it is left out, and decay_ready says the reference lacks the confidence decay."""
    old = valid(profile)
    del old["detected_conf"]
    p = parse_reference(old, kind="detections")
    assert p.detected_conf is None and "confidence" not in p.decay_metrics()
    assert all("confidence:drop" not in t for t in p.thresholds.values())
    assert all("rate:face:drop" in t and "confidence:face:drop" in t for t in p.thresholds.values())
    assert not p.decay_ready and "no confidence decay" in (p.decay_note or "")


def test_labels_are_those_that_cross_the_wire_unchanged() -> None:
    from ota.protocol import MAX_LABEL_CHARS, METRIC_RE

    assert ref_mod.MAX_LABEL_LEN == MAX_LABEL_CHARS
    for label in ("face", "a:b c", "é" * 128, "x" * 128, "\ufffd"):
        assert ref_mod.label_ok(label), label
        assert METRIC_RE.fullmatch(f"confidence:{label}")  # the wire takes it as it is
    for label in ("", "x" * 129, "a\nb", "tab\t", "\x7f", "\ud800"):
        assert not ref_mod.label_ok(label), repr(label)


def test_reference_error_is_a_bundle_error_with_a_reason() -> None:
    err = ReferenceError("x: bad", "wrong_classes")
    assert isinstance(err, BundleError) and err.reason == "wrong_classes"
    assert ReferenceError("y").reason == "malformed"


# ---------------------------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else []
    for k, v in items:
        path = f"{prefix}{k}"
        out.append(path)
        out.extend(_paths(v, path + "/"))
    return out


def must_only_refuse(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ReferenceError as err:
        assert err.reason in ("malformed", "wrong_kind", "missing_metrics", "wrong_classes")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=json_values)
def test_fuzz_anything_is_refused_only_with_reference_error(obj: Any) -> None:
    must_only_refuse(lambda: parse_reference(obj, labels=["face"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_a_valid_profile_with_one_part_replaced(data: st.DataObject, profile: ReferenceProfile) -> None:
    doc = valid(profile)
    path = data.draw(st.sampled_from(_paths(doc)))
    value = data.draw(json_values | st.sampled_from([DELETE, 0, -1, 1e308, "", [], {}]))
    mutated = set_path(doc, path, value)
    result: list[ReferenceProfile] = []
    must_only_refuse(
        lambda: result.append(parse_reference(mutated, labels=["face", "person"], kind="detections"))
    )
    if result:  # what is accepted is usable: thresholds for its sizes, finite, and judges a window
        p = result[0]
        assert all(math.isfinite(t) for table in p.thresholds.values() for t in table.values())
        w = Window(0, 0.0)
        for s in synthetic(np.random.default_rng(0), 30):
            w.add(s)
        DriftDetector(p, model="m", version=1).judge(w)


def test_scores_are_finite_on_empty_bins_and_js_is_in_bits() -> None:
    p = np.array([0.5, 0.5 - scores.PROPORTION_FLOOR, scores.PROPORTION_FLOOR])
    counts = np.array([0.0, 0.0, 30.0])
    assert math.isfinite(float(scores.psi(p, counts)))
    assert float(scores.js_bits(np.array([1.0, 0.0]), np.array([0.0, 5.0]))) == pytest.approx(1.0)
    assert float(scores.js_bits(p, p * 100)) == pytest.approx(0.0, abs=1e-12)


def test_a_reference_with_few_independent_stretches_says_so() -> None:
    import dataclasses

    from monitoring.reference import MIN_STRETCHES

    profile = build_reference(synthetic(np.random.default_rng(5), 600, phi=0.3), rng=np.random.default_rng(6))
    assert profile.samples / profile.block >= MIN_STRETCHES and profile.stretches_note is None
    slow = dataclasses.replace(profile, block=60)
    assert slow.stretches_note is not None and "3000 samples" in slow.stretches_note
    assert slow.notes()[0] == slow.stretches_note

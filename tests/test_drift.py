"""monitoring.drift: the acceptance checks of issue 9 on the detector.

- The false-alarm rate on held-out windows of the reference's own process is at most 1 % for every
  supported window size, shown with a one-sided 95 % Clopper–Pearson bound on the rate pooled over
  several references (synthetic autocorrelated streams, two shapes of dependence; the windows are
  scored in bulk, with the detector's own formulas, checked window by window against the detector;
  real demo frames for a smaller check). A stream whose memory is long for a 2000-sample reference
  is known to exceed it (an expected failure that records the figures).
- Darkened and blurred frames fire brightness, contrast and sharpness alerts within K windows of the
  change and none before; the unchanged source raises none over as many windows.
- A confidence decay raises retrain_suggested with its evidence, fewer objects in view does not;
  alerts clear with hysteresis; runs of windows do not go on over a gap in time; the detector's
  state survives a restart exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from monitoring.drift import SCORES, Alert, DriftDetector, Verdict
from monitoring.frame_stats import Sample
from monitoring.reference import (
    MAX_LABEL_LEN,
    MIN_LABEL_COUNT,
    WINDOW_SIZES,
    MetricReference,
    ReferenceProfile,
    build_reference,
)
from monitoring.window import Window
from tests.fixtures.drift_streams import bulk_scores, demo_samples, stream, synthetic, windows

K = 3
Image = npt.NDArray[np.uint8]


def upper_bound(failures: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper confidence bound of a binomial rate."""

    def cdf(p: float) -> float:  # P(X <= failures), summed in logs (no overflow for thousands of trials)
        if p <= 0:
            return 1.0
        if p >= 1:
            return 1.0 if failures >= trials else 0.0
        logs = [
            math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
            + i * math.log(p) + (trials - i) * math.log1p(-p)
            for i in range(failures + 1)
        ]  # fmt: skip
        top = max(logs)
        return math.exp(top) * sum(math.exp(x - top) for x in logs)

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - confidence else (lo, mid)
    return hi


def run(detector: DriftDetector, ws: Sequence[Window]) -> list[Verdict]:
    return [detector.judge(w) for w in ws]


# ---------------------------------------------------------------------------------------------- acceptance

REFERENCE_SEEDS = (101, 102, 103, 104)  # one reference (and its held-out stretch) each
HELD_OUT = {30: 1500, 60: 1500, 120: 800, 300: 400}  # windows judged per reference and size
CHECKED = 4  # windows per reference and size also judged by the detector itself


def any_over(
    table: dict[str, npt.NDArray[np.float64]], thresholds: dict[str, float]
) -> npt.NDArray[np.bool_]:
    """Per window: any score over its threshold (``scores.exceeds``; NaN: not scored)."""
    out = np.zeros(len(next(iter(table.values()))), np.bool_)
    for k, v in table.items():
        if k in thresholds:
            t = thresholds[k]
            with np.errstate(invalid="ignore"):
                out |= v > t + 1e-9 * max(abs(t), 1e-12)  # scores.exceeds, for every window at once
    return out


@pytest.mark.parametrize(
    ("phi", "regimes"),
    [
        pytest.param(0.6, 0.0, id="ar1-0.6"),  # the shape ALPHA was tuned on, other references
        pytest.param(0.6, 10.0, id="ar1-0.6-regimes"),  # bimodal: levels that switch every ~10 s
        pytest.param(
            (0.6, 0.95),
            0.0,
            id="ar1-0.6+0.95",
            marks=pytest.mark.xfail(
                raises=AssertionError,
                strict=True,
                reason="known limit: a slow component (phi 0.95, ~40 samples to decorrelate) is too slow "
                "for a 2000-sample reference: 2.5-4.9 % of windows drift per size here, 0.7-10 % per "
                "reference (monitoring.reference)",
            ),
        ),
    ],
)
def test_false_alarms_on_held_out_reference_windows_are_at_most_one_percent_per_size(
    phi: float | tuple[float, ...], regimes: float
) -> None:
    """Each of several references, built from 2000 samples of a camera-like stream (scene factors of
    the given dependence, 1 sample a second), judges non-overlapping windows of a later stretch of the
    same process; a window with any drifted metric (or any decay over its threshold) is a false alarm.
    The 95 % upper bound of the rate pooled over the references must be at most 1 % per size."""
    drifted = dict.fromkeys(WINDOW_SIZES, 0)
    decayed = dict.fromkeys(WINDOW_SIZES, 0)
    judged = dict.fromkeys(WINDOW_SIZES, 0)
    per_reference: dict[int, list[str]] = {size: [] for size in WINDOW_SIZES}
    for seed in REFERENCE_SEEDS:
        rng = np.random.default_rng(seed)
        reference = stream(rng, 2000, phi=phi, regimes=regimes)
        profile = build_reference(reference.samples())
        assert profile.sizes == WINDOW_SIZES
        for size in WINDOW_SIZES:
            held_out = stream(rng, size * HELD_OUT[size], phi=phi, regimes=regimes, t0=1e6)
            drift, decay = bulk_scores(profile, reference, held_out, size)
            thresholds = profile.thresholds_for(size)
            assert thresholds is not None
            over, down = any_over(drift, thresholds), any_over(decay, thresholds)
            # the bulk scores are the detector's: the first windows, judged by the detector itself
            detector = DriftDetector(profile, model="m", version=1, k=K)
            for i, verdict in enumerate(
                run(detector, list(windows(held_out.rows(0, CHECKED * size).samples(), size)))
            ):
                got = {f"{s.metric}:{s.score}": s.value for s in verdict.scores}
                expected = {k: float(v[i]) for k, v in {**drift, **decay}.items() if np.isfinite(v[i])}
                assert got.keys() == expected.keys()
                assert all(got[k] == pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in expected.items())
                assert bool(verdict.drifted) == over[i] and bool(verdict.decayed) == down[i]
            drifted[size] += int(over.sum())
            decayed[size] += int(down.sum())
            judged[size] += over.size
            per_reference[size].append(f"{over.mean():.2%}")
    report = []
    for size in WINDOW_SIZES:
        n = judged[size]
        report.append(
            f"{size}: drift {drifted[size]}/{n} = {drifted[size] / n:.2%} "
            f"(95 % bound {upper_bound(drifted[size], n):.2%}; "
            f"per reference {', '.join(per_reference[size])}), "
            f"decay {decayed[size]}/{n} (bound {upper_bound(decayed[size], n):.2%})"
        )
    shape = f"phi {phi}" + (f", regimes of ~{regimes:g} samples" if regimes else "")
    print(f"\nfalse alarms, {shape}, {len(REFERENCE_SEEDS)} references:\n  " + "\n  ".join(report))
    for size, line in zip(WINDOW_SIZES, report, strict=True):
        assert upper_bound(drifted[size], judged[size]) <= 0.01, line
        assert upper_bound(decayed[size], judged[size]) <= 0.01, line


# ---------------------------------------------------------------------------------------------- demo frames


def darken_and_blur(image: Image) -> Image:
    dim = (image.astype(np.float32) * 0.45).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(dim, (0, 0), 3), np.uint8)


@pytest.fixture(scope="module")
def demo_reference(zoo_image: Callable[[str], Image]) -> ReferenceProfile:
    """2000 samples of demo:faces (every 30th frame: 1 a second at 30 fps) with synthetic detections."""
    zoo_image("astronaut.png")  # the demo's face; skips (or fails under CI) when it cannot be fetched
    return build_reference(demo_samples(range(0, 60_000, 30)))


def test_the_unchanged_demo_source_raises_no_alert(demo_reference: ReferenceProfile) -> None:
    detector = DriftDetector(demo_reference, model="blazeface", version=1, k=K)
    held_out = demo_samples(range(150_000, 150_000 + 30 * 30 * 60, 30), seed=1)  # 60 windows, other frames
    verdicts = run(detector, list(windows(held_out, 30)))
    drifted = sum(bool(v.drifted) for v in verdicts)
    assert not any(v.raised for v in verdicts)
    assert drifted <= 2, [v.drifted for v in verdicts if v.drifted]
    print(f"\ndemo:faces held out: {drifted}/60 windows of 30 drifted, no alert")


def test_darkened_and_blurred_frames_alert_within_k_windows_and_not_before(
    demo_reference: ReferenceProfile,
) -> None:
    clean, changed = 8, 6
    start = 200_000
    frames = [start + 30 * i for i in range(30 * (clean + changed))]
    before = demo_samples(frames[: 30 * clean], seed=2)
    after = demo_samples(frames[30 * clean :], edit=darken_and_blur, seed=3)
    detector = DriftDetector(demo_reference, model="blazeface", version=1, k=K)
    verdicts = run(detector, list(windows(before + after, 30)))
    assert not any(v.raised for v in verdicts[:clean])
    raised = {a.metric: a for v in verdicts for a in v.raised if a.kind == "drift"}
    for metric in ("brightness", "contrast", "sharpness"):
        assert metric in raised, sorted(raised)
        alert = raised[metric]
        # raised in the K-th changed window: within K windows of the change, over exactly those windows
        assert alert.windows == tuple(range(clean, clean + K))
        assert alert.start_ts == verdicts[clean].window.start_ts
        assert alert.end_ts == verdicts[clean + K - 1].window.end_ts
        assert alert.state == "raised" and alert.model == "blazeface" and alert.reference == "bundle"
        assert all(metric in v.drifted for v in verdicts[clean:])
    assert {a.metric for a in verdicts[-1].active} >= {"brightness", "contrast", "sharpness"}


def test_a_confidence_decay_on_a_changed_scene_suggests_retraining(demo_reference: ReferenceProfile) -> None:
    clean, decayed = 5, 5
    frames = [300_000 + 30 * i for i in range(30 * (clean + decayed))]
    before = demo_samples(frames[: 30 * clean], seed=4)
    after = demo_samples(frames[30 * clean :], score_shift=-0.15, miss=0.5, seed=5)
    detector = DriftDetector(demo_reference, model="blazeface", version=7, k=K)
    verdicts = run(detector, list(windows(before + after, 30)))
    assert not any(v.raised for v in verdicts[:clean])
    retrain = {a.metric: a for v in verdicts for a in v.raised if a.kind == "retrain_suggested"}
    assert {"confidence", "confidence:face", "rate:face"} <= set(retrain), sorted(retrain)
    alert = retrain["confidence:face"]
    assert alert.windows == tuple(range(clean, clean + K)) and alert.score == "drop"
    assert alert.value > alert.threshold > 0 and alert.version == 7 and alert.model == "blazeface"
    assert alert.start_ts == verdicts[clean].window.start_ts
    assert "retrain suggested" in alert.message() and "blazeface v7" in alert.message()
    doc = alert.to_json()
    assert doc["kind"] == "retrain_suggested" and doc["windows"] == [5, 6, 7] and doc["frames"] == []
    assert Alert.from_json(json.loads(json.dumps(doc))) == alert


# ---------------------------------------------------------------------------------------------- decay


@pytest.fixture(scope="module")
def detector_stream_reference() -> tuple[ReferenceProfile, float]:
    """A detector's reference (2000 synthetic samples) and its share of samples with no box."""
    samples = synthetic(np.random.default_rng(31), 2000)
    empty = float(np.mean([s.values["detections"] == 0 for s in samples]))
    return build_reference(samples), empty


def test_fewer_objects_in_view_is_not_confidence_decay(
    detector_stream_reference: tuple[ReferenceProfile, float],
) -> None:
    """Twice as many frames show nothing (0 confidence), the boxes seen score as before: the count
    change is drift on detections and a fall in the detection rate, not a decay of the confidence."""
    profile, empty = detector_stream_reference
    more_empty = empty / (1 - empty)  # empty + (1 - empty) * more_empty = 2 * empty
    held_out = synthetic(np.random.default_rng(32), 120 * 6, empty=more_empty, t0=1e5)
    share = float(np.mean([s.values["detections"] == 0 for s in held_out]))
    assert 1.8 * empty < share < 2.2 * empty
    verdicts = run(DriftDetector(profile, model="m", version=1, k=K), list(windows(held_out, 120)))
    raised = {(a.kind, a.metric) for v in verdicts for a in v.raised}
    assert ("retrain_suggested", "confidence") not in raised, raised
    assert not any("confidence" in v.decayed for v in verdicts)
    confidence = [s for v in verdicts for s in v.scores if (s.metric, s.score) == ("confidence", "drop")]
    assert len(confidence) == len(verdicts)  # it was judged in every window, and found no drop
    assert ("drift", "detections") in raised  # the count change is seen where it belongs
    assert any(metric.startswith("rate:") for kind, metric in raised if kind == "retrain_suggested")
    assert profile.detected_conf is not None and profile.decay_ready


def test_a_drop_of_the_box_scores_is_confidence_decay(
    detector_stream_reference: tuple[ReferenceProfile, float],
) -> None:
    profile, _ = detector_stream_reference
    held_out = synthetic(np.random.default_rng(33), 120 * 6, score_shift=-0.1, t0=1e5)
    verdicts = run(DriftDetector(profile, model="m", version=1, k=K), list(windows(held_out, 120)))
    retrain = {a.metric: a for v in verdicts for a in v.raised if a.kind == "retrain_suggested"}
    assert "confidence" in retrain, sorted(retrain)
    alert = retrain["confidence"]
    assert alert.windows == (0, 1, 2) and alert.score == "drop" and alert.value > alert.threshold > 0


def test_a_detector_window_with_too_few_boxes_does_not_judge_confidence_decay(
    detector_stream_reference: tuple[ReferenceProfile, float],
) -> None:
    profile, _ = detector_stream_reference
    dark = synthetic(np.random.default_rng(34), 120, empty=0.97, score_shift=-0.5, t0=1e5)
    boxed = sum(s.values["detections"] > 0 for s in dark)
    w = next(windows(dark, 120))
    assert w.detected_confidence().size == boxed
    verdict = DriftDetector(profile, model="m", version=1).judge(w)
    judged = {(s.metric, s.score) for s in verdict.scores}
    assert (("confidence", "drop") in judged) == (boxed >= MIN_LABEL_COUNT)
    assert boxed < MIN_LABEL_COUNT and "confidence" not in verdict.decayed


def test_labels_too_long_for_the_wire_are_left_out_of_the_reference_and_of_the_window() -> None:
    """The MQTT builders cut a label to 128 characters: a longer one is not profiled, and a window
    does not count it either (else its class mix would always differ from the priors)."""
    long = "p" * (MAX_LABEL_LEN + 1)

    def renamed(samples: list[Sample]) -> list[Sample]:
        return [
            Sample(
                s.ts,
                s.frame,
                s.values,
                tuple((long if label == "person" else label, score) for label, score in s.labels),
                s.latency_ms,
            )
            for s in samples
        ]

    rng = np.random.default_rng(41)
    profile = build_reference(renamed(synthetic(rng, 1000)), window_sizes=(30,), replicates=1000, alpha=0.005)
    assert set(profile.class_priors) == {"face"} and set(profile.class_conf) == set(profile.class_rate) == {
        "face"
    }
    verdicts = run(
        DriftDetector(profile, model="m", version=1), list(windows(renamed(synthetic(rng, 300)), 30))
    )
    linf = [s.value for v in verdicts for s in v.scores if s.metric == "classes"]
    assert len(linf) == len(verdicts) and max(linf) == 0.0  # faces only, on both sides
    assert not any("classes" in v.drifted for v in verdicts)


# ---------------------------------------------------------------------------------------------- state machine


def hand_made(threshold: float = 1.0) -> ReferenceProfile:
    """One metric, mean 100 and std 10; only its mean shift can exceed (threshold 1 std)."""
    return ReferenceProfile(
        metrics={"brightness": MetricReference(edges=(100.0,), proportions=(0.5, 0.5), mean=100.0, std=10.0)},
        class_priors={},
        class_conf={},
        thresholds={30: {"brightness:psi": 100.0, "brightness:js": 1.0, "brightness:mean_shift": threshold}},
        samples=1000,
        origin="learned",
    )


def flat(index: int, value: float, n: int = 30, later: float = 0.0) -> Window:
    """Window ``index``: n samples 2 s apart from 1000 + 60 x index + ``later`` (58 s long; 2 s between
    two windows)."""
    start = 1000.0 + 60 * index + later
    w = Window(index, start)
    for i in range(n):
        w.add(Sample(ts=start + 2 * i, frame=i, values={"brightness": value}, labels=(), latency_ms=1))
    return w


def test_alerts_need_k_drifted_windows_and_clear_only_below_the_hysteresis_band() -> None:
    detector = DriftDetector(hand_made(), model="m", version=1, k=3, hysteresis=0.8)
    # shifts in std: 2 = drifted, 0.9 = in the band (not drifted, not calm), 0.5 = calm
    plan = [2, 2, 0.5, 2, 2, 2, 0.9, 0.5, 0.5, 2, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5, 0.5]
    verdicts = [detector.judge(flat(i, 100 + 10 * s)) for i, s in enumerate(plan)]
    events = [(i, a.state) for i, v in enumerate(verdicts) for a in (*v.raised, *v.cleared)]
    # a calm window broke the first run; a window in the band, then a drifted one, reset the calm count
    assert events == [(5, "raised"), (15, "cleared")]
    raised = verdicts[5].raised[0]
    assert raised.windows == (3, 4, 5) and raised.score == "mean_shift" and raised.value == pytest.approx(2.0)
    assert raised.reference == "learned" and "drift on brightness" in raised.message()
    cleared = verdicts[15].cleared[0]
    assert cleared.windows == (13, 14, 15) and cleared.state == "cleared"
    assert all(v.active for v in verdicts[5:15]) and not verdicts[15].active
    assert verdicts[6].drifted == () and verdicts[9].drifted == ("brightness",)


def test_clear_k_can_differ_from_k() -> None:
    detector = DriftDetector(hand_made(), model="m", version=1, k=2, clear_k=1)
    verdicts = [detector.judge(flat(i, v)) for i, v in enumerate([130, 130, 100])]
    assert verdicts[1].raised and verdicts[2].cleared and verdicts[2].cleared[0].windows == (2,)


def test_a_window_below_the_smallest_size_is_not_judged_and_changes_nothing() -> None:
    detector = DriftDetector(hand_made(), model="m", version=1, k=2)
    detector.judge(flat(0, 130))
    before = detector.state()
    small = detector.judge(flat(1, 130, n=29))
    assert not small.judged and small.scores == () and detector.state() == before
    assert detector.judge(flat(2, 130)).raised[0].windows == (0, 2)  # the run went on over the small one


DAY = 86_400.0


def test_a_run_of_drifted_windows_does_not_go_on_over_a_gap_in_time() -> None:
    """Two drifted windows, a day without any, then drifted windows again: K = 3 are needed after
    the gap. A pause under 1.5 window durations (87 s for these 58 s windows) does not break a run."""
    detector = DriftDetector(hand_made(), model="m", version=1, k=3)
    plan = [(0, 0.0), (1, 0.0), (2, DAY), (3, DAY), (4, DAY)]
    verdicts = [detector.judge(flat(i, 130, later=later)) for i, later in plan]
    assert all(v.drifted == ("brightness",) for v in verdicts)
    assert [bool(v.raised) for v in verdicts] == [False, False, False, False, True]
    assert verdicts[4].raised[0].windows == (2, 3, 4)

    for pause, breaks in ((78.0, False), (86.0, True)):  # 2 s + pause between two windows
        detector = DriftDetector(hand_made(), model="m", version=1, k=3)
        plan = [(0, 0.0), (1, 0.0), (2, pause)]
        verdicts = [detector.judge(flat(i, 130, later=later)) for i, later in plan]
        assert bool(verdicts[2].raised) is not breaks, pause


def test_a_run_of_calm_windows_does_not_go_on_over_a_gap_in_time() -> None:
    detector = DriftDetector(hand_made(), model="m", version=1, k=1, clear_k=3)
    plan = [(0, 130, 0.0), (1, 100, 0.0), (2, 100, 0.0), (3, 100, DAY), (4, 100, DAY), (5, 100, DAY)]
    verdicts = [detector.judge(flat(i, v, later=later)) for i, v, later in plan]
    assert verdicts[0].raised and all(v.active for v in verdicts[:5])  # the alert stays over the gap
    assert [bool(v.cleared) for v in verdicts] == [False] * 5 + [True]
    assert verdicts[5].cleared[0].windows == (3, 4, 5)


@pytest.mark.parametrize("saved_by", ["this agent", "an agent before last_span"])
def test_a_restart_after_a_day_starts_the_runs_afresh(saved_by: str) -> None:
    first = DriftDetector(hand_made(), model="m", version=1, k=3)
    run(first, [flat(0, 130), flat(1, 130)])
    state = json.loads(json.dumps(first.state()))
    assert state["last_span"] == [1, 1060.0, 1118.0]
    if saved_by != "this agent":
        del state["last_span"]  # an older state: the latest window its tracks remember stands in
    resumed = DriftDetector(hand_made(), model="m", version=1, k=3, state=state)
    assert resumed.resumed and resumed.state_note is None
    after_a_day = resumed.judge(flat(2, 130, later=DAY))
    assert after_a_day.drifted == ("brightness",) and not after_a_day.raised
    same = DriftDetector(hand_made(), model="m", version=1, k=3, state=state)
    assert same.judge(flat(2, 130)).raised[0].windows == (0, 1, 2)  # no gap: the run goes on


def test_the_state_survives_a_restart_exactly() -> None:
    rng = np.random.default_rng(8)
    profile = build_reference(synthetic(rng, 600), window_sizes=(30,), replicates=1000, alpha=0.005)
    stream = synthetic(rng, 30 * 6) + [
        Sample(s.ts, s.frame, {**s.values, "brightness": s.values["brightness"] - 60}, s.labels, s.latency_ms)
        for s in synthetic(rng, 30 * 6, t0=500)
    ]
    ws = list(windows(stream, 30))
    whole = DriftDetector(profile, model="m", version=3, k=2)
    expected = run(whole, ws)
    first = DriftDetector(profile, model="m", version=3, k=2)
    run(first, ws[:9])
    saved = json.loads(json.dumps(first.state()))  # what the store keeps
    resumed = DriftDetector(profile, model="m", version=3, k=2, state=saved)
    assert resumed.resumed and resumed.state_note is None and resumed.state() == first.state()
    assert resumed.active_alerts() == first.active_alerts() != ()
    got = run(resumed, ws[9:])
    assert [(v.raised, v.cleared, v.active, v.drifted) for v in got] == [
        (v.raised, v.cleared, v.active, v.drifted) for v in expected[9:]
    ]
    assert resumed.state() == whole.state()


def test_a_state_for_another_version_or_reference_or_unreadable_starts_afresh() -> None:
    detector = DriftDetector(hand_made(), model="m", version=1, k=1)
    detector.judge(flat(0, 130))
    state = detector.state()
    other_version = DriftDetector(hand_made(), model="m", version=2, state=state)
    assert not other_version.resumed and "version" in (other_version.state_note or "")
    other_profile = DriftDetector(hand_made(threshold=2.0), model="m", version=1, state=state)
    assert not other_profile.resumed and "fingerprint" in (other_profile.state_note or "")
    for bad in ({"schema": 1}, {"schema": 9}, {**state, "tracks": [{"run": "x"}]}, {**state, "judged": "1"}):
        fresh = DriftDetector(hand_made(), model="m", version=1, state=bad)
        assert not fresh.resumed and fresh.state_note and fresh.active_alerts() == ()
    same = DriftDetector(hand_made(), model="m", version=1, state=state)
    assert same.resumed and same.active_alerts()[0].metric == "brightness"


def test_a_class_mix_change_drifts_classes_by_linf() -> None:
    rng = np.random.default_rng(12)
    profile = build_reference(synthetic(rng, 2000, kind="classes"))
    detector = DriftDetector(profile, model="mobilenet", version=1, k=K)
    same = run(detector, list(windows(synthetic(rng, 60 * 10, kind="classes"), 60)))
    assert not any(v.raised for v in same)
    moved = synthetic(rng, 60 * 4, kind="classes", mix=(0.2, 0.3, 0.5), t0=1e5)
    verdicts = run(detector, list(windows(moved, 60, first_index=10)))
    assert all("classes" in v.drifted for v in verdicts)
    alert = next(a for a in verdicts[K - 1].raised if a.metric == "classes")
    assert alert.score == "linf" and alert.windows == (10, 11, 12)
    linf = next(s for s in verdicts[0].scores if s.metric == "classes")
    assert linf.value == pytest.approx(0.35, abs=0.12)


def test_scores_cover_every_metric_and_only_known_score_names(demo_reference: ReferenceProfile) -> None:
    w = Window(0, 0.0)
    for s in demo_samples(range(400_000, 400_000 + 30 * 30, 30)):
        w.add(s)
    verdict = DriftDetector(demo_reference, model="m", version=1).judge(w)
    assert verdict.judged and verdict.window.samples == 30
    names = {(s.metric, s.score) for s in verdict.scores}
    for metric, m in demo_reference.metrics.items():
        assert {(metric, s) for s in m.score_names} <= names
    assert {s.score for s in verdict.scores} <= {*SCORES, "drop"}
    assert all(math.isfinite(s.value) and s.drifted == (s.value > s.threshold) for s in verdict.scores)
    doc = json.loads(json.dumps(verdict.to_json()))
    assert doc["judged"] is True and len(doc["scores"]) == len(verdict.scores)

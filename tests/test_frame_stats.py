"""monitoring.frame_stats and monitoring.window: each image metric moves the right way on images made
to change it (dark, blurred, saturated, clipped), result metrics per Result kind, the per-frame cost,
and a window's Welford moments, class counts, fps and latency percentiles."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inference.result import ClassScore, Detection, Result
from monitoring.frame_stats import IMAGE_METRICS, METRICS, RESULT_METRICS, FrameStats, Sample
from monitoring.window import LATENCY_RESERVOIR, Window

Image = npt.NDArray[np.uint8]


def scene(width: int = 640, height: int = 480, seed: int = 3) -> Image:
    """A textured colour scene: soft noise, a gradient and some hard-edged shapes."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(128, 50, (height, width, 3)).astype(np.float32), (0, 0), 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = (xx / width * 60 + yy / height * 40)[..., None]
    img = np.clip(noise * np.array([1.0, 0.8, 0.6], np.float32) + gradient, 0, 255).astype(np.uint8)
    for i in range(12):
        x, y = int(rng.integers(0, width * 7 // 8)), int(rng.integers(0, height * 7 // 8))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(img, (x, y), (x + width // 16 + 3 * i, y + height // 16 + 2 * i), colour, -1)
    return img


@pytest.fixture(scope="module")
def base() -> Image:
    return scene()


@pytest.fixture(scope="module")
def stats() -> FrameStats:
    return FrameStats()


def test_metric_names_are_the_contract() -> None:
    assert IMAGE_METRICS == (
        "brightness",
        "contrast",
        "sharpness",
        "dark_fraction",
        "bright_fraction",
        "saturation",
    )
    assert RESULT_METRICS == ("confidence", "margin", "entropy", "detections", "chars")
    assert METRICS == IMAGE_METRICS + RESULT_METRICS


def test_a_darker_image_is_darker_flatter_and_clipped_dark(stats: FrameStats, base: Image) -> None:
    normal = stats.image(base)
    dark = stats.image((base.astype(np.float32) * 0.12).astype(np.uint8))
    assert dark["brightness"] < normal["brightness"] * 0.15
    assert dark["contrast"] < normal["contrast"] * 0.15
    assert dark["sharpness"] < normal["sharpness"] * 0.1  # the Laplacian scales with the light
    assert dark["dark_fraction"] > normal["dark_fraction"] + 0.2
    assert dark["bright_fraction"] == 0.0


def test_a_blurred_image_loses_sharpness_and_keeps_its_brightness(stats: FrameStats, base: Image) -> None:
    normal = stats.image(base)
    blurred = stats.image(cv2.GaussianBlur(base, (0, 0), 6))
    assert blurred["sharpness"] < normal["sharpness"] * 0.5
    assert blurred["brightness"] == pytest.approx(normal["brightness"], abs=2)
    slightly = stats.image(cv2.GaussianBlur(base, (0, 0), 2))
    assert blurred["sharpness"] < slightly["sharpness"] < normal["sharpness"]  # monotonic in the blur


def test_a_saturated_image_is_more_saturated_and_a_grey_one_not_at_all(
    stats: FrameStats, base: Image
) -> None:
    normal = stats.image(base)
    hsv = cv2.cvtColor(base, cv2.COLOR_BGR2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.int32) * 3, 0, 255).astype(np.uint8)
    vivid = stats.image(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
    assert vivid["saturation"] > normal["saturation"] * 1.5
    grey = cv2.cvtColor(cv2.cvtColor(base, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert stats.image(grey)["saturation"] == pytest.approx(0.0, abs=0.5)
    single = stats.image(cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))  # a one-channel frame works too
    assert single["saturation"] == 0.0
    assert single["brightness"] == pytest.approx(normal["brightness"], abs=1.5)


def test_an_overexposed_image_clips_bright(stats: FrameStats, base: Image) -> None:
    burnt = stats.image(np.clip(base.astype(np.int32) * 3, 0, 255).astype(np.uint8))
    assert burnt["bright_fraction"] > 0.3
    assert burnt["brightness"] > stats.image(base)["brightness"]


def test_flat_images_have_exact_values(stats: FrameStats) -> None:
    black = stats.image(np.zeros((480, 640, 3), np.uint8))
    assert black == {
        "brightness": 0.0,
        "contrast": 0.0,
        "sharpness": 0.0,
        "dark_fraction": 1.0,
        "bright_fraction": 0.0,
        "saturation": 0.0,
    }
    white = stats.image(np.full((480, 640, 3), 255, np.uint8))
    assert white["brightness"] == 255.0 and white["bright_fraction"] == 1.0 and white["dark_fraction"] == 0.0
    red = stats.image(
        np.dstack([np.zeros((48, 64)), np.zeros((48, 64)), np.full((48, 64), 200)]).astype(np.uint8)
    )
    assert red["saturation"] == 255.0


def test_thumbnails_keep_the_aspect_and_never_enlarge(stats: FrameStats) -> None:
    assert stats.thumbnail(np.zeros((480, 640, 3), np.uint8)).shape == (48, 64, 3)
    assert stats.thumbnail(np.zeros((720, 1280, 3), np.uint8)).shape == (36, 64, 3)
    assert stats.thumbnail(np.zeros((1000, 100, 3), np.uint8)).shape == (640, 64, 3)
    small = np.zeros((30, 40, 3), np.uint8)
    assert stats.thumbnail(small) is small
    with pytest.raises(ValueError):
        stats.image(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError):
        FrameStats(thumb_width=4)


def test_the_metrics_barely_depend_on_the_resolution(stats: FrameStats, base: Image) -> None:
    full = stats.image(base)
    half = stats.image(cv2.resize(base, (320, 240), interpolation=cv2.INTER_AREA))
    for metric in ("brightness", "contrast", "saturation"):
        assert half[metric] == pytest.approx(full[metric], rel=0.05)


def test_classifier_results_give_confidence_margin_entropy_and_the_top_label(stats: FrameStats) -> None:
    result = Result(
        kind="classes",
        confidence=0.6,
        inference_ms=7.5,
        classes=[ClassScore("dog", 0.3), ClassScore("cat", 0.6), ClassScore("fox", 0.1)],
    )
    sample = stats.sample(12, 1000.5, scene(64, 48), result)
    assert sample.frame == 12 and sample.ts == 1000.5 and sample.latency_ms == 7.5
    assert sample.values["confidence"] == 0.6
    assert sample.values["margin"] == pytest.approx(0.3)
    assert sample.values["entropy"] == pytest.approx(-sum(p * math.log(p) for p in (0.3, 0.6, 0.1)))
    assert "detections" not in sample.values
    assert sample.labels == (("cat", 0.6),)
    assert set(IMAGE_METRICS) <= set(sample.values)
    one = stats.sample(
        0, 0.0, scene(64, 48), Result(kind="classes", confidence=0.9, classes=[ClassScore("a", 0.9)])
    )
    assert one.values["margin"] == pytest.approx(0.9) and one.values["entropy"] == 0.0
    none = stats.sample(0, 0.0, scene(64, 48), Result(kind="classes", confidence=0.0))
    assert none.values["margin"] == 0.0 and none.labels == ()


def test_detector_results_give_the_count_and_every_box_label(stats: FrameStats) -> None:
    dets = [
        Detection("face", 0.9, (0, 0, 1, 1)),
        Detection("face", 0.7, (0, 0, 1, 1)),
        Detection("hand", 0.5, (0, 0, 1, 1)),
    ]
    sample = stats.sample(1, 1.0, scene(64, 48), Result(kind="detections", confidence=0.9, detections=dets))
    assert sample.values["detections"] == 3.0 and sample.values["confidence"] == 0.9
    assert sample.labels == (("face", 0.9), ("face", 0.7), ("hand", 0.5))
    assert "margin" not in sample.values and "entropy" not in sample.values
    empty = stats.sample(2, 2.0, scene(64, 48), Result(kind="detections", confidence=0.0))
    assert empty.values["detections"] == 0.0 and empty.labels == ()


def test_raw_models_give_confidence_only_and_non_finite_values_are_left_out(stats: FrameStats) -> None:
    raw = stats.sample(1, 1.0, scene(64, 48), Result(kind="outputs", confidence=0.4, outputs=[{"name": "y"}]))
    assert set(raw.values) == {*IMAGE_METRICS, "confidence"} and raw.labels == ()
    bad = stats.sample(1, 1.0, scene(64, 48), Result(kind="outputs", confidence=math.nan, finite=False))
    assert "confidence" not in bad.values


def test_the_per_frame_cost_is_tens_of_microseconds(stats: FrameStats, base: Image) -> None:
    for _ in range(50):
        stats.image(base)
    times = []
    for _ in range(300):
        t0 = time.perf_counter()
        stats.image(base)
        times.append(time.perf_counter() - t0)
    median_us = float(np.median(times)) * 1e6
    print(f"\nFrameStats.image on 640x480: {median_us:.1f} us median per frame")
    assert median_us < 2000  # loose: a loaded CI machine; typically 40-70 us on a desktop core


# ---------------------------------------------------------------------------------------------- window


def sample(i: int, values: dict[str, float], labels: tuple[tuple[str, float], ...] = ()) -> Sample:
    return Sample(ts=100.0 + i, frame=i * 30, values=values, labels=labels, latency_ms=4.0 + i % 3)


def test_a_window_keeps_raw_values_welford_moments_and_class_statistics() -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(50, 10, 200)
    w = Window(7, 100.0)
    for i, x in enumerate(xs):
        labels = (("face", 0.8), ("hand", 0.6)) if i % 4 == 0 else (("face", 0.9),)
        w.add(sample(i, {"brightness": float(x), "confidence": 0.5}, labels))
    assert w.n == 200 and w.index == 7 and w.end_ts == 299.0
    assert np.array_equal(w.values("brightness"), xs)
    assert w.values("margin").size == 0
    s = w.summary()
    assert s.means["brightness"] == pytest.approx(xs.mean(), rel=1e-12)
    assert s.stds["brightness"] == pytest.approx(xs.std(), rel=1e-9)
    assert s.stds["confidence"] == pytest.approx(0.0, abs=1e-12)
    assert s.class_counts == {"face": 200, "hand": 50}
    assert s.class_conf["face"] == pytest.approx((50 * 0.8 + 150 * 0.9) / 200)
    assert s.class_conf["hand"] == pytest.approx(0.6)
    assert s.latency_ms == pytest.approx(np.mean([4.0 + i % 3 for i in range(200)]))
    assert s.to_json()["class_counts"] == {"face": 200, "hand": 50}


def test_a_window_keeps_the_confidence_of_the_detector_samples_with_a_box(stats: FrameStats) -> None:
    """A detector's confidence is 0 when it finds nothing: its decay is judged on the samples with a box."""
    w = Window(0, 0.0)
    image = scene(64, 48)
    box = Detection("face", 0.7, (0, 0, 1, 1))
    for i, dets in enumerate([[box], [], [box, box], [], []]):
        conf = 0.7 if dets else 0.0
        w.add(stats.sample(i, float(i), image, Result(kind="detections", confidence=conf, detections=dets)))
    w.add(
        stats.sample(5, 5.0, image, Result(kind="classes", confidence=0.9, classes=[ClassScore("cat", 0.9)]))
    )
    w.add(sample(6, {"detections": 1.0}))  # no confidence
    w.add(sample(7, {"detections": 2.0, "confidence": math.nan}))
    assert w.detected_confidence().tolist() == [0.7, 0.7]
    assert w.values("confidence").tolist() == [0.7, 0.0, 0.7, 0.0, 0.0, 0.9]
    assert Window(1, 0.0).detected_confidence().size == 0


def test_a_window_counts_every_frame_for_fps_and_latency_percentiles() -> None:
    w = Window(0, 10.0)
    for i in range(300):  # 30 fps for 10 s
        w.count_frame(float(i % 100), ts=10.0 + (i + 1) / 30)
    s = w.summary()
    assert s.frames == 300 and s.samples == 0
    assert s.fps == pytest.approx(30.0)
    assert s.latency_p50_ms == pytest.approx(49.5) and s.latency_p95_ms == pytest.approx(94.05)
    empty = Window(1, 5.0).summary()
    assert empty.fps == 0.0 and empty.latency_p50_ms == 0.0 and empty.means == {}


def test_the_latency_reservoir_is_bounded_and_stays_representative() -> None:
    w = Window(3, 0.0)
    for i in range(5 * LATENCY_RESERVOIR):
        w.count_frame(float(i % 1000))
    assert len(w._latencies) == LATENCY_RESERVOIR
    assert w.summary().latency_p50_ms == pytest.approx(500, abs=40)
    w.count_frame(math.nan)  # a non-finite latency is counted as a frame, not as a latency
    assert w.frames == 5 * LATENCY_RESERVOIR + 1

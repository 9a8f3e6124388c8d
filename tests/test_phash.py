"""phash64 / hamming / RecentHashes: near frames close, other scenes far, a bounded memory in time."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.demo_source import SCENE_FRAMES, parse_demo_spec
from monitoring.phash import RecentHashes, hamming, phash64


@pytest.fixture(scope="module")
def frames() -> dict[int, np.ndarray]:
    s = parse_demo_spec("demo:faces:320x240@0")
    s.open()
    return {i: s.frame(i) for i in (0, 1, *(k * SCENE_FRAMES for k in range(1, 6)))}


def test_hamming() -> None:
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, (1 << 64) - 1) == 64


def test_identical_and_reencoded_frames_are_close(frames: dict[int, np.ndarray]) -> None:
    f = frames[0]
    h = phash64(f)
    assert 0 <= h < 1 << 64
    assert phash64(f.copy()) == h
    ok, jpeg = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    assert hamming(h, phash64(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))) <= 3
    noisy = np.clip(f.astype(np.int16) + np.random.default_rng(0).normal(0, 6, f.shape), 0, 255)
    assert hamming(h, phash64(noisy.astype(np.uint8))) <= 3
    brighter = cv2.convertScaleAbs(f, alpha=1.0, beta=15)
    assert hamming(h, phash64(brighter)) <= 4
    assert hamming(h, phash64(frames[1])) <= 6  # the next frame of the same scene
    grey = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    assert hamming(h, phash64(grey)) <= 2
    big = cv2.resize(f, (640, 480))
    assert hamming(h, phash64(big)) <= 4  # the same scene at another resolution


def test_other_scenes_are_far(frames: dict[int, np.ndarray]) -> None:
    scenes = [phash64(frames[k * SCENE_FRAMES]) for k in range(1, 6)] + [phash64(frames[0])]
    distances = [hamming(a, b) for i, a in enumerate(scenes) for b in scenes[i + 1 :]]
    assert min(distances) >= 16, distances


def test_bad_image_is_refused() -> None:
    with pytest.raises(ValueError):
        phash64(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        phash64(np.zeros(10, np.uint8))


def test_recent_hashes_window_and_bits() -> None:
    now = [1000.0]
    recent = RecentHashes(bits=4, window_s=600, clock=lambda: now[0])
    assert not recent.seen(0b1111)
    recent.add(0b1111)
    assert recent.seen(0b1111)
    assert recent.seen(0)  # 4 bits away
    assert not recent.seen(0b10000)  # 5 bits away
    now[0] += 600
    assert recent.seen(0b1111)  # the window is inclusive
    now[0] += 0.5
    assert not recent.seen(0b1111)
    assert len(recent) == 0
    recent.add(1 << 63, now=now[0])  # the top bit survives the uint64 store
    assert recent.seen(1 << 63, now=now[0]) and recent.seen((1 << 63) | 1, now=now[0])
    assert not recent.seen((1 << 63) - 1, now=now[0] + 1)  # all 64 bits differ


def test_recent_hashes_bounded_oldest_out() -> None:
    recent = RecentHashes(bits=0, window_s=1e9, clock=lambda: 0.0, max_kept=8)
    for i in range(20):
        recent.add(i, now=float(i))
    assert len(recent) == 8
    assert not recent.seen(11, now=20.0)
    assert all(recent.seen(i, now=20.0) for i in range(12, 20))
    assert RecentHashes(bits=0, window_s=1.0).max_kept == 4096


def test_recent_hashes_clock_step_back_forgets() -> None:
    recent = RecentHashes(bits=2, window_s=600, clock=lambda: 0.0)
    recent.add(7, now=5000.0)
    assert not recent.seen(7, now=100.0)  # a hash from "the future" does not block frames
    recent.add(7, now=100.0)
    assert recent.seen(7, now=101.0)


@pytest.mark.parametrize("bits,window", [(-1, 10.0), (65, 10.0), (4, 0.0)])
def test_recent_hashes_bad_arguments(bits: int, window: float) -> None:
    with pytest.raises(ValueError):
        RecentHashes(bits=bits, window_s=window)

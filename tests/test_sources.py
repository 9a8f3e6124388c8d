"""Sources: synthetic, folder, video file, camera/stream errors, bad specs, back-off reconnection, demo."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.demo_source import DemoSource, demo_for_model
from agent.source import (
    Backoff,
    CaptureSource,
    FolderSource,
    Reconnecting,
    SyntheticSource,
    iter_images,
    open_source,
)
from inference.errors import SourceError
from tests.fixtures.agent import FakeClock, FakeSource, numbered


def check_image(image: np.ndarray, h: int, w: int) -> None:
    assert image.shape == (h, w, 3) and image.dtype == np.uint8 and image.flags["C_CONTIGUOUS"]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_lossless_and_unpaced() -> None:
    a = open_source("synthetic:64x48@30")
    assert isinstance(a, SyntheticSource) and not a.live
    images = list(iter_images(a, limit=20))
    assert len(images) == 20
    for image in images:
        check_image(image, 48, 64)
    b = open_source("synthetic:64x48@30")
    again = list(iter_images(b, limit=20))
    assert all(np.array_equal(x, y) for x, y in zip(images, again, strict=True))
    assert not np.array_equal(images[0], images[1])  # it moves


def test_synthetic_live_is_paced_with_the_injected_clock() -> None:
    clock = FakeClock()
    src = open_source("synthetic:32x24@10,live", sleep=clock.sleep, clock=clock)
    assert src.live
    src.open()
    for _ in range(5):
        assert src.read() is not None
    assert clock.sleeps == pytest.approx([0.1] * 4)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("synthetic:640x480@", "synthetic:WIDTHxHEIGHT@FPS"),
        ("synthetic:axb", "synthetic:WIDTHxHEIGHT@FPS"),
        ("synthetic:0x480@30", "size must be"),
        ("", "empty source spec"),
        ("ftp://camera/x", "unsupported URL scheme"),
        ("/no/such/file.mp4", "no such file or folder"),
        ("demo:cats", "demo:faces or demo:text"),
        ("demo:faces:10x10", "64..8192"),
    ],
)
def test_bad_specs_name_the_spec_and_what_is_accepted(spec: str, words: str) -> None:
    with pytest.raises(SourceError) as err:
        open_source(spec)
    assert words in str(err.value)


def test_spec_kinds() -> None:
    cam = open_source("/dev/video0")
    assert isinstance(cam, CaptureSource) and cam.live and cam.kind == "camera"
    idx = open_source("2")
    assert isinstance(idx, CaptureSource) and idx.kind == "camera"
    url = open_source("rtsp://10.0.0.5:554/stream")
    assert isinstance(url, CaptureSource) and url.live and url.kind == "stream"
    demo = open_source("demo:text:320x240@0")
    assert isinstance(demo, DemoSource) and demo.kind == "text" and not demo.live
    assert open_source("demo").live  # paced like a camera by default


# --------------------------------------------------------------------------- cameras and streams


def test_missing_camera_says_what_to_check() -> None:
    src = open_source("/dev/video97")
    with pytest.raises(SourceError) as err:
        src.open()
    text = str(err.value)
    assert "cannot open /dev/video97" in text and "no such device" in text and "connected" in text


def test_missing_camera_index_names_the_device() -> None:
    with pytest.raises(SourceError, match="no such device"):
        open_source("97").open()


def test_unreachable_stream_is_a_source_error() -> None:
    src = open_source("http://127.0.0.1:9/none.mjpg")
    with pytest.raises(SourceError, match=r"cannot open http://127\.0\.0\.1:9/none\.mjpg.*URL"):
        src.open()


# --------------------------------------------------------------------------- image folders


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), numbered(i * 10, (12, 16)))


def test_folder_sorted_skips_unreadable_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path, 3)
    (tmp_path / "img_001b.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((12, 16), 200, np.uint8))
    src = open_source(str(tmp_path))
    assert isinstance(src, FolderSource) and not src.live
    with caplog.at_level(logging.WARNING, logger="agent.source"):
        images = list(iter_images(src))
    assert [int(im[0, 0, 0]) for im in images] == [200, 0, 10, 20]  # gray.png sorts first
    for im in images:
        check_image(im, 12, 16)
    assert src.skipped == 1
    assert any("img_001b.png" in r.getMessage() for r in caplog.records)


def test_folder_loop_replays(tmp_path: Path) -> None:
    write_images(tmp_path, 3)
    images = list(iter_images(open_source(str(tmp_path), loop=True), limit=7))
    assert [int(im[0, 0, 0]) for im in images] == [0, 10, 20, 0, 10, 20, 0]


def test_folder_loop_with_nothing_readable_ends(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"junk")
    src = open_source(str(tmp_path), loop=True)
    assert list(iter_images(src, limit=5)) == []


def test_empty_folder_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images in the folder"):
        open_source(str(tmp_path)).open()


# --------------------------------------------------------------------------- video files


def write_video(path: Path, n: int, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(numbered(i * 20, (size[1], size[0])))
    writer.release()


def test_video_file_is_lossless_and_ends(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 10)
    src = open_source(str(path))
    assert isinstance(src, CaptureSource) and not src.live
    images = list(iter_images(src))
    assert len(images) == 10
    check_image(images[0], 48, 64)
    assert [round(im.mean() / 20) for im in images] == list(range(10))  # MJPG is lossy but close


def test_video_file_loops(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, 4)
    images = list(iter_images(open_source(str(path), loop=True), limit=10))
    assert len(images) == 10
    assert [round(im.mean() / 20) for im in images] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_undecodable_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match=r"cannot open .*broken\.mp4.*cannot decode"):
        open_source(str(path)).open()


# --------------------------------------------------------------------------- reconnection


def test_dead_source_is_reopened_with_exponential_backoff() -> None:
    clock = FakeClock()
    inner = FakeSource(6, live=True, die_at=[2], fail_opens=3)
    statuses: list[str] = []
    backoff = Backoff(0.5, 2.0, 30.0)
    src = Reconnecting(inner, backoff, sleep=clock.sleep, clock=clock, on_status=statuses.append)
    src.open()
    got = []
    while (image := src.read()) is not None:
        got.append(int(image[0, 0, 0]))
    assert got == [0, 1, 2, 3, 4, 5]  # nothing lost, nothing crashed
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]  # three failed reopenings, then success
    assert src.reconnects == 1 and src.failures == 4 and src.down_since is None
    assert statuses[0].startswith("source down") and statuses[-1] == "source reopened"
    assert inner.opens == 5


def test_backoff_is_capped() -> None:
    b = Backoff(0.5, 2.0, 30.0)
    assert [b.delay(i) for i in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30


def test_reconnecting_gives_up_when_stopped() -> None:
    clock = FakeClock()
    stop = {"now": False}

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            stop["now"] = True

    inner = FakeSource(None, live=True, die_at=[1], fail_opens=100)
    src = Reconnecting(inner, sleep=sleep, clock=clock, stopped=lambda: stop["now"])
    src.open()
    assert src.read() is not None
    assert src.read() is None  # stop asked during the back-off: the end, not an exception
    assert len(clock.sleeps) == 3


def test_unexpected_exception_in_a_source_counts_as_a_death() -> None:
    class Flaky(FakeSource):
        def read(self) -> np.ndarray | None:
            if self.reads == 1 and self.opens == 1:
                self.reads += 1
                raise ValueError("driver bug")
            return super().read()

    clock = FakeClock()
    src = Reconnecting(Flaky(3), sleep=clock.sleep, clock=clock)
    src.open()
    got = []
    while (image := src.read()) is not None:
        got.append(int(image[0, 0, 0]))
    assert got == [0, 1, 2]
    assert src.reconnects == 1


# --------------------------------------------------------------------------- demo


def test_demo_for_model() -> None:
    assert demo_for_model("blazeface") == "demo:faces"
    assert demo_for_model("ppocr-det") == "demo:text"
    assert demo_for_model("something-else") == "demo:faces"


def test_demo_text_frames_are_deterministic_and_varied() -> None:
    src = open_source("demo:text:320x240@0")
    frames = list(iter_images(src, limit=3))
    for f in frames:
        check_image(f, 240, 320)
    other = open_source("demo:text:320x240@0")
    other.open()
    assert isinstance(other, DemoSource)
    assert np.array_equal(other.frame(2), frames[2])
    assert not np.array_equal(other.frame(0), other.frame(200))  # another scene


@pytest.mark.models
def test_demo_faces_shows_the_astronaut(zoo_image: Callable[[str], np.ndarray]) -> None:
    astronaut = zoo_image("astronaut.png")  # skips when offline without a cache
    src = open_source("demo:faces@0")
    frames = list(iter_images(src, limit=2))
    check_image(frames[0], 480, 640)
    assert frames[0].std() > 20  # a real picture, not a flat background
    assert astronaut.shape == (512, 512, 3)

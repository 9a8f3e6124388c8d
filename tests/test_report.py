"""monitoring.report and ``edge-agent report``: the plots and index.html from a metrics.db written
through MetricsStore's own methods (two model versions, an alert raised and cleared, one still
active, a class label that is HTML), read read-only while the writer holds its lock."""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from inference.errors import ConfigError
from monitoring.metrics_store import MetricsStore
from monitoring.report import IMAGES, NothingToReport, build_report, parse_since
from tests.fixtures.agent import run_agent

LABEL = "<script>alert(1)</script>"
IMAGE_METRICS = ("brightness", "contrast", "sharpness", "dark_fraction", "bright_fraction", "saturation")
RESULT_METRICS = ("confidence", "margin", "entropy")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def populate(store: MetricsStore, t0: float, n: int, step: float = 60.0, seed: int = 0) -> dict[str, int]:
    """``n`` windows of ``step`` s from ``t0``: v1 (bundle reference) for the first half, then v2
    (learned reference); the scene darkens at 60 % (brightness and contrast drift, confidence
    falls): a drift alert raised 3 windows later and cleared at 85 %; a retrain_suggested on
    the class ``LABEL`` raised at 70 %, still active. 31 drift scores a window."""
    rng = np.random.default_rng(seed)
    frames = 0
    store.add_model_version("clf", 1, "a" * 64, "bundle", ts=t0)
    for i in range(n):
        end = t0 + (i + 1) * step
        version = 1 if i < n // 2 else 2
        if i == n // 2:
            store.add_model_version("clf", 2, "b" * 64, "learned", ts=end - step)
        dark = int(0.6 * n) <= i < int(0.85 * n)
        row = {
            "model": "clf",
            "version": version,
            "reference": "bundle" if version == 1 else "learned",
            "start_ts": end - step,
            "end_ts": end,
            "samples": int(step),
            "frames": int(step * 30),
            "fps": 30.0 + rng.normal(0, 0.3),
            "latency_p50_ms": 11.0 + rng.normal(0, 0.2),
            "latency_p95_ms": 16.0 + abs(rng.normal(0, 1.0)),
            "confidence": (0.55 if dark else 0.85) + rng.normal(0, 0.02),
            "drifted": dark,
            "summary": {
                "index": i,
                "means": {"brightness": 40.0 if dark else 120.0},
                "class_counts": {LABEL: 3},
            },
        }
        frames += int(step * 30)
        scores = []
        for metric in IMAGE_METRICS + RESULT_METRICS:
            for name, threshold in (("psi", 0.25), ("js", 0.05), ("mean_shift", 3.0)):
                value = abs(rng.normal(0, threshold / 3))
                if dark and metric in ("brightness", "contrast", "confidence"):
                    value += 2 * threshold
                scores.append(
                    {
                        "metric": metric,
                        "score": name,
                        "value": value,
                        "threshold": threshold,
                        "drifted": value > threshold,
                    }
                )
        scores.append(
            {"metric": "classes", "score": "linf", "value": 0.05, "threshold": 0.2, "drifted": False}
        )
        scores.append(
            {
                "metric": f"confidence:{LABEL}",
                "score": "mean_shift",
                "value": 1.0,
                "threshold": 3.0,
                "drifted": False,
            }
        )
        store.add_window(row, scores)
        if i == int(0.6 * n) + 2:
            store.add_alert(_alert(end, "drift", "brightness", "raised", version, [i - 2, i - 1, i]))
        if i == int(0.7 * n):
            store.add_alert(_alert(end, "retrain_suggested", f"confidence:{LABEL}", "raised", version, [i]))
        if i == int(0.85 * n) + 2:
            store.add_alert(_alert(end, "drift", "brightness", "cleared", version, [i]))
    return {"frames": frames}


def _alert(
    ts: float, kind: str, metric: str, state: str, version: int, windows: list[int]
) -> dict[str, object]:
    return {  # Alert.to_json() as the monitor writes it
        "kind": kind,
        "metric": metric,
        "score": "mean_shift" if kind == "retrain_suggested" else "psi",
        "value": 0.6,
        "threshold": 0.25,
        "state": state,
        "windows": windows,
        "start_ts": ts - 180.0,
        "end_ts": ts,
        "model": "clf",
        "version": version,
        "reference": "learned",
        "frames": ["f-1", "f-2"],
    }


T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, float, dict[str, int]]]:
    """A metrics.db with 6 h of 60 s windows; yields (path, end of the data, totals)."""
    path = tmp_path / "state" / "metrics.db"
    n = 360
    store = MetricsStore(path, clock=Clock(T0 + n * 60.0))
    totals = populate(store, T0, n)
    store.close()
    yield path, T0 + n * 60.0, totals


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # decodes the whole image
        return im.size


def check_output(out: Path) -> str:
    """The PNGs decode and are big enough, index.html links each; returns the HTML."""
    assert sorted(p.name for p in out.iterdir()) == sorted([*IMAGES, "index.html"])  # no temp files left
    for png in (out / name for name in IMAGES):
        width, height = png_size(png)
        assert width >= 600 and height >= 300 and png.stat().st_size > 10_000
    text = (out / "index.html").read_text()
    for name in IMAGES:
        assert f'src="{name}"' in text
    assert not re.search(r'(src|href)="(https?:)?//', text)  # self-contained
    return text


def test_the_report_shows_plots_and_a_summary_of_the_period(db: tuple[Path, float, dict[str, int]]) -> None:
    path, end, totals = db
    out = path.parent / "report"
    summary = build_report(path, out, since_s=86400, now=end + 30)
    text = check_output(out)
    assert summary.index == out / "index.html" and summary.images == tuple(out / n for n in IMAGES)
    assert (summary.windows, summary.hourly, summary.frames) == (360, 0, totals["frames"])
    assert summary.models == ("clf v1 (bundle)", "clf v2 (learned)")
    assert (summary.alerts_raised, summary.alerts_cleared) == (2, 1)
    assert summary.active == (f"retrain_suggested confidence:{LABEL}",)
    assert summary.drifting == ()  # the scene is back in the last window
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "learned from live data" in text  # a learned reference is said to be one
    assert "aaaaaaaaaaaa" in text and "bbbbbbbbbbbb" in text  # versions with their sha256
    assert text.count("<tr><td>20") >= 3  # the three alert rows, each starting with its time
    assert str(path) in text


def test_the_plots_are_not_blank(db: tuple[Path, float, dict[str, int]]) -> None:
    path, end, _ = db
    out = path.parent / "report"
    build_report(path, out, since_s=86400, now=end + 30)
    for name in IMAGES:
        with Image.open(out / name) as im:
            colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 50  # lines, spans, text: not an empty canvas


def test_a_running_agent_is_not_disturbed(db: tuple[Path, float, dict[str, int]]) -> None:
    """While a writer holds the write lock mid-transaction, the report reads everything and
    changes neither the database nor its WAL; the writer goes on afterwards."""
    path, end, _ = db
    store = MetricsStore(path)  # the agent's connection
    store.add_event("start")  # the WAL holds a commit
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a write transaction in progress
    other.execute("INSERT INTO events (ts, kind, level, detail) VALUES (1, 'x', 'info', '')")
    wal = Path(f"{path}-wal")
    before = (path.read_bytes(), wal.read_bytes())
    try:
        summary = build_report(path, path.parent / "report", since_s=86400, now=end + 30)
        assert summary.windows == 360
        assert (path.read_bytes(), wal.read_bytes()) == before
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.add_window({"model": "clf", "version": 2, "start_ts": end, "end_ts": end + 60.0}, [])
    assert store.count("windows") == 361
    store.close()


def test_a_store_object_works_too(db: tuple[Path, float, dict[str, int]]) -> None:
    path, end, _ = db
    store = MetricsStore(path)
    try:
        summary = build_report(store, path.parent / "report", since_s=3 * 3600, now=end + 30)
    finally:
        store.close()
    assert summary.windows == 180 and summary.models == ("clf v2 (learned)",)
    assert (summary.alerts_raised, summary.alerts_cleared) == (2, 1)


def test_pruned_windows_are_replaced_by_hourly_rollups(db: tuple[Path, float, dict[str, int]]) -> None:
    path, end, _ = db
    store = MetricsStore(path, max_age_days=3 * 3600 / 86400)  # keeps the last 3 h of raw windows
    try:
        done = store.housekeeping(end + 30)
    finally:
        store.close()
    assert done["deleted"]["windows"] == 180
    out = path.parent / "report"
    summary = build_report(path, out, since_s=86400, now=end + 30)
    check_output(out)
    assert summary.windows == 180 and summary.hourly == 3  # hours 0-2 of the data from roll-ups
    assert summary.models == ("clf v1 (bundle)", "clf v2 (learned)")


def test_nothing_to_report_says_why(tmp_path: Path, db: tuple[Path, float, dict[str, int]]) -> None:
    empty = tmp_path / "empty" / "metrics.db"
    MetricsStore(empty).close()
    with pytest.raises(NothingToReport, match=r"no drift windows recorded.*monitoring"):
        build_report(empty, tmp_path / "out", since_s=3600, now=T0)
    path, end, _ = db
    with pytest.raises(NothingToReport, match=r"nothing to report in the last 30m.*give a longer --since"):
        build_report(path, tmp_path / "out", since_s=1800, now=end + 86400)
    with pytest.raises(ConfigError, match="no metrics database there"):
        build_report(tmp_path / "nowhere" / "metrics.db", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_it_says_how_to_install_it(
    db: tuple[Path, float, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    path, end, _ = db
    with pytest.raises(ConfigError, match=re.escape("pip install 'edge-agent[report]'")):
        build_report(path, path.parent / "report", now=end)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("90", 90), ("45s", 45), ("1.5h", 5400)],
)
def test_since_durations(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "3y", "h", "1 day"])
def test_bad_since_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since(text)


def test_a_day_of_one_minute_windows_reports_in_seconds(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    store = MetricsStore(path, clock=Clock(T0 + 86400))
    populate(store, T0, 1440)
    store.close()
    start = time.perf_counter()
    summary = build_report(path, tmp_path / "report", since_s=86400, now=T0 + 86400 + 30)
    elapsed = time.perf_counter() - start
    assert summary.windows == 1440
    assert elapsed < 10.0, f"{elapsed:.1f} s for 1440 windows × 31 scores"


# -- the command line --------------------------------------------------------------------------


def test_cli_report_prints_the_index_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "metrics.db"
    now = time.time()
    store = MetricsStore(path, clock=Clock(now))
    populate(store, now - 120 * 60.0, 120)  # the last two hours: the CLI's period ends now
    store.close()
    out = tmp_path / "report"
    assert main(["report", "--db", str(path), "--out", str(out), "--since", "3h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out / "index.html")
    assert lines[1].startswith("120 windows") and "clf v2 (learned)" in lines[1]
    assert (out / "drift.png").is_file()

    assert main(["report", "--db", str(path), "--out", str(out), "--since", "1s"]) == 1
    err = capsys.readouterr().err
    assert "edge-agent report: error:" in err and "give a longer --since" in err


def test_cli_report_in_a_subprocess_with_the_default_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "xdg-state" / "edge-agent"  # where agent_env points the default state folder
    now = time.time()
    store = MetricsStore(state / "metrics.db", clock=Clock(now))
    populate(store, now - 30 * 60.0, 30)
    store.close()
    out = tmp_path / "report"
    proc = run_agent(["report", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(out / "index.html")
    check_output(out)
    assert str(state) in (out / "index.html").read_text()

    proc = run_agent(["report", "--state-dir", str(tmp_path / "none"), "--out", str(out)], tmp_path)
    assert proc.returncode == 1 and "no metrics database there" in proc.stderr


def test_windows_without_scores_while_the_reference_is_learned(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    store = MetricsStore(path, clock=Clock(T0))
    store.add_model_version("det", 3, "c" * 64, "learning", ts=T0)
    for i in range(3):  # three windows: points, not an empty plot
        end = T0 + (i + 1) * 30.0
        row = {"model": "det", "version": 3, "reference": "learning", "start_ts": end - 30.0, "end_ts": end}
        store.add_window({**row, "samples": 30, "frames": 900, "fps": 30.0, "confidence": 0.9}, [])
    store.close()
    out = tmp_path / "report"
    summary = build_report(path, out, since_s=3600, now=T0 + 120)
    text = check_output(out)
    assert summary.models == ("det v3 (learning)",) and summary.windows == 3 and summary.frames == 2700
    assert "learning (no reference yet)" in text and "no drift scores in this period" in text
    assert summary.line().startswith(
        "3 windows, 2700 frames from 2023-11-14 22:13:20 UTC to 2023-11-14 22:14:50"
    )

"""``edge-agent report``: PNG plots and an ``index.html`` from a ``metrics.db``.

``build_report(store_or_path, out_dir, since_s, now)`` reads the database read-only
(``MetricsReader``: a running agent goes on writing) and writes, each atomically:

    drift.png       drift scores ÷ their thresholds over time, one panel per metric (1 = threshold)
    confidence.png  the windows' mean confidence, drifted windows marked
    latency.png     latency p50 and p95 (ms) and frames per second
    index.html      self-contained: the plots beside a summary table (period, windows, frames,
                    models and versions with their reference's origin, alerts, the latest
                    drift state); every string from the database is escaped

Every plot marks alerts (a shaded span from raised to cleared, labelled ``kind metric``) and
model version changes (a vertical line labelled ``name vN``). Where the raw windows of the
period were pruned, the hourly roll-ups stand in (dashed, "hourly"). Times are UTC.

matplotlib is an optional dependency (``pip install 'edge-agent[report]'``); it is used through
``matplotlib.figure.Figure`` with the Agg canvas, never pyplot, so no GUI backend is touched.
Errors: ``ConfigError`` (no database, matplotlib missing), ``NothingToReport`` (a ``ConfigError``:
no windows in the period, with the reason), ``TransientError``/``FatalError`` from SQLite.
"""

from __future__ import annotations

import html
import io
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import ConfigError
from inference.fsio import DEFAULT_FS, FsOps, atomic_write_bytes
from monitoring.metrics_store import HOUR, MetricsQueries, MetricsReader

INSTALL_HINT = "pip install 'edge-agent[report]'"
IMAGES = ("drift.png", "confidence.png", "latency.png")
MAX_DRIFT_PANELS = 12
DPI = 100
WIDTH_IN = 12.0  # 1200 px at DPI
# panel order: image statistics, then result statistics, then the class mix; the rest by name
_ORDER = (
    "brightness",
    "contrast",
    "sharpness",
    "dark_fraction",
    "bright_fraction",
    "saturation",
    "confidence",
    "margin",
    "entropy",
    "detections",
    "chars",
    "classes",
)
_SCORE_COLORS = {"psi": "C0", "js": "C1", "mean_shift": "C2", "linf": "C3"}
_KIND_COLORS = {"drift": "tab:orange", "retrain_suggested": "tab:purple"}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _score_key(name: str) -> tuple[int, str]:
    order = list(_SCORE_COLORS)
    return (order.index(name) if name in order else len(order), name)


class NothingToReport(ConfigError):
    """The database holds no window for the period asked (the message says why)."""


def parse_since(text: str) -> float:
    """``30m``, ``24h``, ``7d``, ``2w``, ``90s`` or plain seconds, as seconds (> 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r}: expected a duration such as 30m, 24h, 7d or a number of seconds")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def human_duration(seconds: float) -> str:
    """``7d``, ``24h``, ``30m``, ``2.5h``, ``90s``: the largest unit that gives at least 2."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f}".removesuffix(".0") + unit
    return f"{seconds:.0f}s"


def iso(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class ReportSummary:
    index: Path
    images: tuple[Path, ...]
    since: float  # the period asked: [since, until]
    until: float
    first: float  # the data found: from the start of its first window to the end of its last
    last: float
    windows: int  # raw windows in the period
    hourly: int  # hourly roll-ups standing in for pruned windows
    frames: int
    models: tuple[str, ...]  # "name vN (reference)"
    alerts_raised: int
    alerts_cleared: int
    active: tuple[str, ...]  # "kind metric" of the alerts still raised at the end
    drifting: tuple[str, ...]  # metrics over their threshold in the latest window

    def line(self) -> str:
        parts = [
            f"{self.windows} windows"
            + (f" + {self.hourly} hourly roll-ups" if self.hourly else "")
            + f", {self.frames} frames from {iso(self.first)} to {iso(self.last)}"
            + f" (period: the last {human_duration(self.until - self.since)})",
            "models " + (", ".join(self.models) or "-"),
            f"alerts: {self.alerts_raised} raised, {self.alerts_cleared} cleared"
            + (f", active: {', '.join(self.active)}" if self.active else ""),
            "drifting now: " + (", ".join(self.drifting) or "nothing"),
        ]
        return "; ".join(parts)


@dataclass
class _Span:
    start: float
    end: float
    kind: str
    metric: str
    active: bool

    @property
    def label(self) -> str:
        return f"{self.kind} {self.metric}" + (" (active)" if self.active else "")


@dataclass
class _Data:
    db: str
    since: float
    until: float
    windows: list[dict[str, Any]]
    hourly: list[dict[str, Any]]
    drift: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (metric, score) -> times, value ÷ threshold
    hourly_drift: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # the same, hourly means (mid-hour)
    latest: list[dict[str, Any]]  # the scores of the newest window that has any
    alerts: list[dict[str, Any]]  # in the period
    spans: list[_Span]
    versions: list[tuple[float, str]]  # (ts, "name vN") where the serving version changed
    version_rows: list[dict[str, Any]]
    x0: float = 0.0
    x1: float = 0.0
    notes: list[str] = field(default_factory=list)


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a device; harmless when already chosen
        import matplotlib.dates
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            f"edge-agent report needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return Figure


# ---------------------------------------------------------------------------------- reading


def _read(q: MetricsQueries, db: str, since: float, until: float) -> _Data:
    windows = q.windows(since, summary=False)
    first_raw = windows[0]["end_ts"] if windows else math.inf
    # hours before the first raw window of the period: their windows were pruned
    hourly = [r for r in q.rollups_windows("hour", since - HOUR) if r["start_ts"] + HOUR <= first_raw]
    hourly = [r for r in hourly if r["start_ts"] + HOUR > since]
    if not windows and not hourly:
        raise NothingToReport(_why_empty(q, db, since, until))
    drift = {key: (_arr(ts), _ratio(_arr(v), _arr(t))) for key, (ts, v, t) in q.drift_series(since).items()}
    first_drift = min((float(ts[0]) for ts, _ in drift.values()), default=math.inf)
    hourly_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in q.rollups_drift("hour", since - HOUR):
        if since < r["start_ts"] + HOUR <= first_drift:
            hourly_rows.setdefault((r["metric"], r["score"]), []).append(r)
    hourly_drift = {
        key: (_col(rows, "start_ts") + HOUR / 2, _ratio(_col(rows, "mean"), _col(rows, "threshold")))
        for key, rows in hourly_rows.items()
    }
    all_alerts = q.alerts(0.0)
    version_rows = q.model_versions(0.0)
    data = _Data(
        db=db,
        since=since,
        until=until,
        windows=windows,
        hourly=hourly,
        drift=drift,
        hourly_drift=hourly_drift,
        latest=_sorted_latest(q.latest_drift(since)),
        alerts=[a for a in all_alerts if a["ts"] >= since],
        spans=[],
        versions=[],
        version_rows=version_rows,
    )
    starts = [w["start_ts"] for w in windows] + [r["start_ts"] for r in hourly]
    ends = [w["end_ts"] for w in windows] + [r["start_ts"] + HOUR for r in hourly]
    data.x0, data.x1 = max(min(starts), since - HOUR), max(ends)
    data.versions = _version_changes(version_rows, windows, data.x0, data.x1)
    data.spans = _spans(all_alerts, version_rows, data.x0, data.x1)
    return data


def _why_empty(q: MetricsQueries, db: str, since: float, until: float) -> str:
    span = q.time_range("windows")
    if span is None:
        return (
            f"{db}: no drift windows recorded, nothing to report: the agent has not run with drift "
            "monitoring on (the [monitoring] section of the config), or not yet for one whole window"
        )
    newest = span[1]
    return (
        f"{db}: nothing to report in the last {human_duration(until - since)}: no window ended after "
        f"{iso(since)}; the newest ended {iso(newest)} ({human_duration(max(until - newest, 0.0))} before "
        "the end of the period): give a longer --since"
    )


def _version_changes(
    rows: list[dict[str, Any]], windows: list[dict[str, Any]], x0: float, x1: float
) -> list[tuple[float, str]]:
    """Where the serving version changed: from ``model_versions``, else from the windows."""
    seq = [(r["ts"], r["model"], r["version"]) for r in rows]
    if not any(x0 <= ts <= x1 for ts, _, _ in seq):
        seq = [(w["start_ts"], w["model"], w["version"]) for w in windows]
    out: list[tuple[float, str]] = []
    prev: tuple[Any, Any] | None = None
    for ts, model, version in seq:
        if (model, version) != prev and prev is not None and x0 <= ts <= x1:
            out.append((ts, f"{model} v{version}"))
        prev = (model, version)
    return out


def _spans(alerts: list[dict[str, Any]], versions: list[dict[str, Any]], x0: float, x1: float) -> list[_Span]:
    """Alerts as spans from raised to cleared. One never cleared ends where another version of
    its model took over (the new version's statistics start afresh), else it is still active."""
    open_: dict[tuple[Any, ...], dict[str, Any]] = {}
    out: list[_Span] = []
    for a in alerts:
        key = (a["kind"], a["metric"], a["model"], a["version"])
        if a["state"] == "raised":
            open_.setdefault(key, a)
        elif a["state"] == "cleared":
            raised = open_.pop(key, None)
            start = raised["ts"] if raised is not None else x0
            out.append(_Span(start, a["ts"], str(a["kind"]), str(a["metric"]), active=False))
    for (kind, metric, model, version), a in open_.items():
        swaps = [
            v["ts"] for v in versions if v["model"] == model and v["version"] != version and v["ts"] > a["ts"]
        ]
        end = min(swaps) if swaps else x1
        out.append(_Span(a["ts"], end, str(kind), str(metric), active=not swaps))
    return [s for s in out if s.end >= x0 and s.start <= x1]


# ---------------------------------------------------------------------------------- plotting


def _mpl_text(text: str) -> str:
    """A label as matplotlib shows it literally ("$" would start mathtext)."""
    return text.replace("$", r"\$")


def _t(ts: Iterable[float] | np.ndarray) -> np.ndarray:
    return (np.asarray(ts, dtype=np.float64) * 1e6).astype("datetime64[us]")


def _with_gaps(ts: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Break the lines where the agent did not run (a gap over 3 × the median step)."""
    if len(ts) < 3:
        return (ts, *ys)
    step = np.diff(ts)
    cut = np.nonzero(step > 3 * max(float(np.median(step)), 1e-9))[0] + 1
    if not len(cut):
        return (ts, *ys)
    t2 = np.insert(ts, cut, ts[cut - 1] + step[cut - 1] / 2)
    return (t2, *(np.insert(np.asarray(y, dtype=np.float64), cut, np.nan) for y in ys))


def _col(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r[key] is None else float(r[key]) for r in rows], dtype=np.float64)


def _style_time_axis(ax: Any, data: _Data) -> None:
    import matplotlib.dates

    dates: Any = matplotlib.dates  # partly untyped
    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    pad = max((data.x1 - data.x0) * 0.01, 1.0)
    ax.set_xlim(_t([data.x0 - pad])[0], _t([data.x1 + pad])[0])
    ax.grid(True, alpha=0.3)


def _mark(ax: Any, data: _Data, *, labels: bool, metric: str | None = None) -> None:
    """Alert spans and version changes on ``ax``; span labels for ``metric``'s alerts (all if None)."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8}
    drawn = 0
    for s in data.spans:
        start, end = max(s.start, data.x0), min(s.end, data.x1)
        color = _KIND_COLORS.get(s.kind, "tab:red")
        mine = metric is None or s.metric == metric or s.metric.split(":", 1)[0] == metric
        ax.axvspan(
            _t([start])[0], _t([max(end, start + 1.0)])[0], color=color, alpha=0.18 if mine else 0.07, lw=0
        )
        if labels and mine:
            ax.text(
                _t([start])[0],
                0.97 - 0.1 * (drawn % 5),  # alerts raised together: one label under the other
                _mpl_text(s.label),
                transform=trans,
                va="top",
                ha="left",
                fontsize=8,
                color=color,
                clip_on=True,
                zorder=6,
                bbox=box,
            )
            drawn += 1
    for ts, name in data.versions:
        ax.axvline(_t([ts])[0], color="0.35", ls="--", lw=1)
        if labels:
            ax.text(
                _t([ts])[0],
                0.03,
                _mpl_text(name),
                transform=trans,
                va="bottom",
                ha="left",
                fontsize=8,
                color="0.25",
                rotation=90,
                clip_on=True,
                zorder=6,
                bbox=box,
            )


def _headroom(ax: Any, bottom: float | None = None, share: float = 0.2) -> None:
    """Room above the data for the alert labels."""
    lo, hi = ax.get_ylim()
    lo = lo if bottom is None else bottom
    ax.set_ylim(lo, hi + (hi - lo) * share)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _drift_metrics(data: _Data) -> tuple[list[str], list[str]]:
    """The metrics to plot (at most ``MAX_DRIFT_PANELS``) and those left out."""
    peak: dict[str, float] = {}
    for (metric, _), (_, ratio) in (*data.drift.items(), *data.hourly_drift.items()):
        peak[metric] = max(peak.get(metric, 0.0), float(np.nanmax(ratio, initial=0.0)))
    alerted = {s.metric for s in data.spans}

    def rank(m: str) -> tuple[int, int, float, str]:
        order = _ORDER.index(m) if m in _ORDER else len(_ORDER)
        return (0 if m in alerted else 1, 0 if m in _ORDER else 1, -peak[m], str(order) + m)

    chosen = sorted(peak, key=rank)[:MAX_DRIFT_PANELS]
    chosen.sort(key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))
    return chosen, sorted(set(peak) - set(chosen))


def _no_drift_reason(data: _Data) -> str:
    refs = {w["reference"] for w in data.windows}
    if refs == {"learning"}:
        return "no drift scores in this period: the reference is still being learned from live data"
    return "no drift scores in this period (windows smaller than the smallest supported size?)"


def _marker(n: int) -> str | None:
    """Dots on short series, so a few windows still show as points."""
    return "." if n < 200 else None


def _plot_drift(Figure: Any, data: _Data) -> bytes:
    metrics, left_out = _drift_metrics(data)
    if left_out:
        data.notes.append(f"{len(left_out)} more drift metrics not plotted: {', '.join(left_out)}")
    if not metrics:
        fig = Figure(figsize=(WIDTH_IN, 3.0), layout="constrained")
        ax = fig.add_subplot()
        ax.text(
            0.5,
            0.5,
            _mpl_text(_no_drift_reason(data)),
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return _png(fig)
    ncols = 1 if len(metrics) <= 3 else 2
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(WIDTH_IN, 1.2 + 2.1 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    by, hourly = data.drift, data.hourly_drift
    handles: dict[str, Any] = {}
    others = sorted({s for _, s in (*by, *hourly)} - set(_SCORE_COLORS))
    colors = {**_SCORE_COLORS, **{s: f"C{4 + i % 6}" for i, s in enumerate(others)}}
    for ax, metric in zip(axes, metrics, strict=False):
        peak = 1.0
        for score in sorted({s for m, s in (*by, *hourly) if m == metric}, key=_score_key):
            if (metric, score) in by:
                ts, ratio = by[(metric, score)]
                t, y = _with_gaps(ts, ratio)
                (line,) = ax.plot(
                    _t(t), y, color=colors[score], lw=1.0, marker=_marker(len(t)), label=_mpl_text(score)
                )
                handles.setdefault(score, line)
                peak = max(peak, float(np.nanmax(ratio, initial=0.0)))
            if (metric, score) in hourly:
                ts, ratio = hourly[(metric, score)]
                (line,) = ax.plot(_t(ts), ratio, color=colors[score], lw=1.0, ls="--", marker=".", ms=3)
                handles.setdefault("hourly mean", line)
                peak = max(peak, float(np.nanmax(ratio, initial=0.0)))
        line = ax.axhline(1.0, color="tab:red", ls=":", lw=1.2)
        handles.setdefault("threshold", line)
        if peak > 20:  # far over: linear up to the threshold, logarithmic above
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylim(0, peak * 3)
        else:
            ax.set_ylim(0, peak * 1.3)  # room for the labels above the lines
        ax.set_title(_mpl_text(metric), fontsize=10, loc="left")
        ax.set_ylabel("score ÷ threshold", fontsize=8)
        _mark(ax, data, labels=True, metric=metric)
        _style_time_axis(ax, data)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    order = ["threshold", *_SCORE_COLORS, *sorted(handles), "hourly mean"]
    handles = {k: handles[k] for k in sorted(handles, key=order.index)}
    fig.suptitle("Drift scores against their thresholds (above 1 = over the threshold; UTC)", fontsize=11)
    fig.legend(
        list(handles.values()),
        [_mpl_text(k) for k in handles],
        loc="outside lower center",
        ncols=min(len(handles), 8),
        fontsize=8,
    )
    return _png(fig)


def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _ratio(value: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """value ÷ threshold; NaN where the threshold is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(threshold > 0, value / threshold, np.nan)


def _plot_confidence(Figure: Any, data: _Data) -> bytes:
    fig = Figure(figsize=(WIDTH_IN, 4.0), layout="constrained")
    ax = fig.add_subplot()
    handles = []
    if data.windows:
        ts = _col(data.windows, "end_ts")
        t, conf = _with_gaps(ts, _col(data.windows, "confidence"))
        (line,) = ax.plot(_t(t), conf, color="C0", lw=1.0, marker=_marker(len(t)), label="window mean")
        handles.append(line)
        drifted = np.array([bool(w["drifted"]) for w in data.windows])
        if drifted.any():
            handles.append(
                ax.scatter(
                    _t(ts[drifted]),
                    _col(data.windows, "confidence")[drifted],
                    color="tab:red",
                    marker="x",
                    s=14,
                    lw=1,
                    label="drifted window",
                    zorder=3,
                )
            )
    if data.hourly:
        (line,) = ax.plot(
            _t(_col(data.hourly, "start_ts") + HOUR / 2),
            _col(data.hourly, "confidence"),
            color="C0",
            ls="--",
            marker=".",
            ms=3,
            lw=1.0,
            label="hourly mean",
        )
        handles.append(line)
    _headroom(ax)
    ax.set_ylabel("mean confidence")
    ax.set_title("Confidence per window (UTC)", fontsize=11, loc="left")
    _mark(ax, data, labels=True)
    _style_time_axis(ax, data)
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8)
    return _png(fig)


def _plot_latency(Figure: Any, data: _Data) -> bytes:
    fig = Figure(figsize=(WIDTH_IN, 6.0), layout="constrained")
    lat, fps = fig.subplots(2, 1, sharex=True)
    if data.windows:
        ts = _col(data.windows, "end_ts")
        t, p50, p95, f = _with_gaps(
            ts,
            _col(data.windows, "latency_p50_ms"),
            _col(data.windows, "latency_p95_ms"),
            _col(data.windows, "fps"),
        )
        mark = _marker(len(t))
        lat.plot(_t(t), p50, color="C0", lw=1.0, marker=mark, label="p50")
        lat.plot(_t(t), p95, color="C1", lw=1.0, marker=mark, label="p95")
        fps.plot(_t(t), f, color="C2", lw=1.0, marker=mark, label="fps")
    if data.hourly:
        th = _t(_col(data.hourly, "start_ts") + HOUR / 2)
        for ax, key, color, label in (
            (lat, "latency_p50_ms", "C0", "p50"),
            (lat, "latency_p95_ms", "C1", "p95"),
            (fps, "fps", "C2", "fps"),
        ):
            ax.plot(
                th, _col(data.hourly, key), color=color, ls="--", marker=".", ms=3, lw=1.0,
                label=f"{label} (hourly mean)",
            )  # fmt: skip
    lat.set_ylabel("latency (ms)")
    _headroom(lat, bottom=0.0)
    lat.set_title("Model latency per window (UTC)", fontsize=11, loc="left")
    fps.set_ylabel("frames per second")
    _headroom(fps, bottom=0.0)
    for ax, labels in ((lat, True), (fps, False)):
        _mark(ax, data, labels=labels)
        _style_time_axis(ax, data)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.layout { display: grid; grid-template-columns: minmax(26em, 1fr) 2.2fr; gap: 1.5em; align-items: start; }
@media (max-width: 1100px) { .layout { grid-template-columns: 1fr; } }
table { border-collapse: collapse; font-size: .85em; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.drifted { color: #b00; font-weight: 600; } .learned { color: #a60; font-weight: 600; }
figure { margin: 0 0 1.5em; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; } .note { color: #555; font-size: .85em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if not math.isfinite(f):
        return _e(f)
    return f"{f:.{digits}g}" if abs(f) < 1e4 else f"{f:.0f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    body = "".join("<tr>" + "".join(rows_) + "</tr>\n" for rows_ in rows)
    if not body:
        return f'<p class="note">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _td(text: str, cls: str = "") -> str:
    """A cell; ``text`` must already be escaped."""
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _reference_cell(reference: Any) -> str:
    ref = "" if reference is None else str(reference)
    if ref == "learned":
        return _td("learned from live data", "learned")
    if ref == "learning":
        return _td("learning (no reference yet)", "learned")
    return _td(_e(ref or "-"))


def _models(data: _Data) -> list[dict[str, Any]]:
    """(model, version) seen in the period: references, sha256, windows, first and last."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}

    def entry(model: Any, version: Any) -> dict[str, Any]:
        key = (str(model), int(version or 0))
        return seen.setdefault(
            key,
            {
                "model": key[0],
                "version": key[1],
                "references": [],
                "sha256": "",
                "windows": 0,
                "first": math.inf,
                "last": -math.inf,
            },
        )

    for r in data.hourly:
        e = entry(r["model"], r["version"])
        e["windows"] += r["windows"] or 0
        e["first"], e["last"] = min(e["first"], r["start_ts"]), max(e["last"], r["start_ts"] + HOUR)
    for w in data.windows:
        e = entry(w["model"], w["version"])
        e["windows"] += 1
        e["first"], e["last"] = min(e["first"], w["start_ts"]), max(e["last"], w["end_ts"])
        if w["reference"] and w["reference"] not in e["references"]:
            e["references"].append(w["reference"])
    for v in data.version_rows:
        key = (str(v["model"]), int(v["version"] or 0))
        if key in seen:
            seen[key]["sha256"] = v["sha256"] or seen[key]["sha256"]
            if v["reference"] and not seen[key]["references"]:
                seen[key]["references"].append(v["reference"])
    return sorted(seen.values(), key=lambda e: e["first"])


def _sorted_latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def ratio(r: dict[str, Any]) -> float:
        v, t = r["value"], r["threshold"]
        return v / t if v is not None and t else 0.0

    return sorted(rows, key=lambda r: (-ratio(r), r["metric"], r["score"]))


def _windows_cell(detail: Any) -> str:
    windows = detail.get("windows") if isinstance(detail, dict) else None
    if not isinstance(windows, list) or not windows:
        return "-"
    if len(windows) > 4:
        return _e(f"{windows[0]}…{windows[-1]} ({len(windows)})")
    return _e(", ".join(str(w) for w in windows))


def _html(data: _Data, summary: ReportSummary, state_dir: Path | None) -> str:
    info = [
        ("database", _e(data.db)),
        ("state folder", _e(state_dir if state_dir is not None else Path(data.db).parent)),
        ("period", _e(f"{iso(data.since)} → {iso(data.until)} ({human_duration(data.until - data.since)})")),
        ("data from", _e(f"{iso(data.x0)} → {iso(data.x1)}")),
        (
            "windows",
            _e(
                f"{summary.windows}"
                + (f" + {summary.hourly} hourly roll-ups (raw windows pruned)" if summary.hourly else "")
            ),
        ),
        ("frames", _e(summary.frames)),
        ("alerts", _e(f"{summary.alerts_raised} raised, {summary.alerts_cleared} cleared")),
        ("active alerts", _e(", ".join(summary.active) or "none")),
        ("drifting now", _e(", ".join(summary.drifting) or "nothing")),
    ]
    overview = (
        "<table><tbody>\n"
        + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>\n" for k, v in info)
        + "</tbody></table>"
    )
    models = _table(
        ("model", "version", "reference", "sha256", "windows", "from", "to"),
        (
            [
                _td(_e(m["model"])),
                _td(_e(m["version"]), "num"),
                *(
                    [_reference_cell(m["references"][-1])]
                    if len(m["references"]) <= 1
                    else [_td(_e(" → ".join(m["references"])), "learned")]
                ),
                _td(_e(str(m["sha256"])[:12] or "-")),
                _td(_e(m["windows"]), "num"),
                _td(_e(iso(m["first"]))),
                _td(_e(iso(m["last"]))),
            ]
            if m["references"]
            else [
                _td(_e(m["model"])),
                _td(_e(m["version"]), "num"),
                _td("-"),
                _td(_e(str(m["sha256"])[:12] or "-")),
                _td(_e(m["windows"]), "num"),
                _td(_e(iso(m["first"]))),
                _td(_e(iso(m["last"]))),
            ]
            for m in _models(data)
        ),
        "no model seen",
    )
    alerts = _table(
        ("time", "state", "kind", "metric", "score", "value", "threshold", "windows", "model", "frames"),
        (
            [
                _td(_e(iso(a["ts"]))),
                _td(_e(a["state"]), "drifted" if a["state"] == "raised" else ""),
                _td(_e(a["kind"])),
                _td(_e(a["metric"])),
                _td(_e(a["score"])),
                _td(_num(a["value"]), "num"),
                _td(_num(a["threshold"]), "num"),
                _td(_windows_cell(a["detail"])),
                _td(_e(f"{a['model']} v{a['version']}")),
                _td(_e(len(a["detail"].get("frames") or []) if isinstance(a["detail"], dict) else 0), "num"),
            ]
            for a in data.alerts
        ),
        "no alert in this period",
    )
    latest = data.latest
    score_names = sorted({r["score"] for r in latest}, key=_score_key)
    per_metric: dict[str, dict[str, dict[str, Any]]] = {}
    for r in latest:
        per_metric.setdefault(r["metric"], {})[r["score"]] = r
    drift = _table(
        ("metric", "state", *(f"{n} (value / threshold)" for n in score_names)),
        (
            [
                _td(_e(metric), "drifted" if any(r["drifted"] for r in scores.values()) else ""),
                _td("drifted", "drifted") if any(r["drifted"] for r in scores.values()) else _td("ok"),
                *(
                    _td(
                        f"{_num(scores[n]['value'])} / {_num(scores[n]['threshold'])}",
                        "num drifted" if scores[n]["drifted"] else "num",
                    )
                    if n in scores
                    else _td("")
                    for n in score_names
                ),
            ]
            for metric, scores in per_metric.items()
        ),
        "no drift scores in this period",
    )
    latest_at = f" (window ending {iso(max(r['ts'] for r in latest))})" if latest else ""
    captions = {
        "drift.png": "Drift scores divided by their thresholds, one panel per metric; above 1 is over "
        "the threshold. Shaded: alerts from raised to cleared. Dashed vertical lines: model version changes.",
        "confidence.png": "Mean confidence of each window; crosses mark drifted windows.",
        "latency.png": "Model latency (p50, p95) and frames per second of each window.",
    }
    figures = "".join(
        f'<figure><a href="{_e(name)}"><img src="{_e(name)}" alt="{_e(name)}"></a>'
        f"<figcaption>{_e(captions[name])}</figcaption></figure>\n"
        for name in IMAGES
    )
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge-agent report: {_e(iso(data.since))} to {_e(iso(data.until))}</title>
<style>{_CSS}</style></head>
<body>
<h1>edge-agent drift report</h1>
<p class="note">{_e(summary.line())}</p>
<div class="layout">
<section>
<h2>Summary</h2>
{overview}
<h2>Models and versions</h2>
{models}
<h2>Alerts</h2>
{alerts}
<h2>Latest drift state{_e(latest_at)}</h2>
{drift}
{notes}
</section>
<section>
{figures}
</section>
</div>
<p class="note">Generated {_e(iso(data.until))} by edge-agent report. Times are UTC.</p>
</body></html>
"""


# ---------------------------------------------------------------------------------- entry


def build_report(
    store_or_path: MetricsQueries | Path | str,
    out_dir: Path | str,
    since_s: float = 86400.0,
    now: float | None = None,
    *,
    state_dir: Path | None = None,
    fs: FsOps = DEFAULT_FS,
) -> ReportSummary:
    """Write the plots and ``index.html`` for the ``since_s`` seconds before ``now`` into
    ``out_dir`` (see the module docstring); returns what they show."""
    Figure = _matplotlib()
    until = time.time() if now is None else now
    since = until - since_s
    out = Path(out_dir)
    if isinstance(store_or_path, MetricsQueries):
        data = _read(store_or_path, str(store_or_path.path), since, until)
    else:
        path = Path(store_or_path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: no metrics database there: has the agent run with this state folder? "
                "(give --state-dir or --db)"
            )
        with MetricsReader(path) as reader:
            data = _read(reader, str(path), since, until)
    pngs = {
        "drift.png": _plot_drift(Figure, data),
        "confidence.png": _plot_confidence(Figure, data),
        "latency.png": _plot_latency(Figure, data),
    }
    for name, png in pngs.items():
        atomic_write_bytes(out / name, png, fs)
    latest = data.latest
    models = tuple(
        f"{m['model']} v{m['version']} ({' → '.join(m['references']) or '?'})" for m in _models(data)
    )
    summary = ReportSummary(
        index=out / "index.html",
        images=tuple(out / name for name in IMAGES),
        since=since,
        until=until,
        first=data.x0,
        last=data.x1,
        windows=len(data.windows),
        hourly=len(data.hourly),
        frames=int(sum(w["frames"] or 0 for w in data.windows) + sum(r["frames"] or 0 for r in data.hourly)),
        models=models,
        alerts_raised=sum(1 for a in data.alerts if a["state"] == "raised"),
        alerts_cleared=sum(1 for a in data.alerts if a["state"] == "cleared"),
        active=tuple(s.label.removesuffix(" (active)") for s in data.spans if s.active),
        drifting=tuple(sorted({r["metric"] for r in latest if r["drifted"]})),
    )
    atomic_write_bytes(out / "index.html", _html(data, summary, state_dir).encode(), fs)
    return summary

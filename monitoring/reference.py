"""The reference profile: what "normal" looks like for a model, and the drift thresholds per window size.

Built from sample frames (``build_reference``: at bundle creation, or learned from the first hours of
live data) and stored in the manifest as ``reference`` (``to_json`` / ``parse_reference``, schema 1).

Per metric (``monitoring.frame_stats.METRICS`` that apply to the model's kind):

- bin edges on the reference quantiles (``BINS`` = 10 bins; bin i holds edges[i-1] < x <= edges[i],
  the outer bins are open-ended). Quantiles are taken with the inverted CDF, so every edge is a value
  the reference holds; equal quantiles (ties, discrete metrics such as ``detections``, mostly-zero ones
  such as ``dark_fraction``) are merged, no edge is put at or above the maximum, and bins with less
  than ``MIN_BIN_SHARE`` of the reference are merged into their smaller neighbour, so every bin has
  support. A constant metric keeps one edge at its value (its upper bin is empty).
- the bin proportions, floored at ``scores.PROPORTION_FLOOR`` so PSI and JS stay finite, and the mean
  and the standard deviation, floored at ``STD_FLOOR`` (a metric's resolution) so a constant metric
  does not make every shift infinite. For ``LOG_METRICS`` (sharpness: the variance of the Laplacian
  spans orders of magnitude and is heavy-tailed) mean and std are of log1p(value), so its mean shift
  is measured on that scale: on the raw scale one rare very sharp frame would move a window's mean
  further than anything the reference shows.

Classes: the label priors (share of each label among all labels: top-1 per sample for a classifier,
one per box for a detector), and for the labels seen often enough (``DECAY_MIN_SHARE`` of the samples,
at most ``MAX_DECAY_LABELS``) the mean and std of their scores and, for detectors, of their count per
sample (the detection rate). Only labels the MQTT protocol carries unchanged are profiled
(``label_ok``: 1 to ``MAX_LABEL_LEN`` = 128 characters, no control characters, valid Unicode): the
builders cut longer labels to 128 characters, so two longer labels would share one metric key on the
wire; the detector ignores the others too, so the reference and a window see the same labels.

Decay (``retrain_suggested``) is one-sided: the mean confidence (``confidence``), each tracked
label's mean score (``confidence:<label>``) and, for detectors, its detections per sample
(``rate:<label>``) falling. A detector's ``Result.confidence`` is 0 when it finds no box, so its
mean over all samples falls whenever fewer objects are in view (an empty scene at night) without any
decay of the model; a detector's ``confidence`` decay is therefore measured over the samples with at
least one box only (``detected_conf``: their mean and std; a window needs ``MIN_LABEL_COUNT`` of
them), and a change in how many objects are in view is left to ``rate:<label>`` and to the drift
scores of ``detections``. The drift scores of a detector's ``confidence`` (PSI, JS, mean shift) are
still over every sample, 0 for no box: they say the output distribution changed, which fewer objects
in view does change, not that the model decayed. ``decay_ready`` says whether a profile can judge the
decay its kind should be judged on (``decay_note`` says what it lacks).

Thresholds (``thresholds[n]["metric:score"]``) are bootstrapped, not constants. For each window size n:

1. ``REPLICATES`` (B = 4000) replicate windows of n samples are drawn from the reference (in capture
   order) with a moving-block bootstrap: camera frames are autocorrelated, so stretches of consecutive
   samples are drawn. Each metric (and the classes, as one group) has its own block length: the
   Politis–White automatic block length (2004, with the 2009 correction of Patton, Politis and
   White), 1 when no autocorrelation is significant, rounded up to 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
   A window shorter than the block is one contiguous stretch. ``block`` in the JSON is the largest.
   Metrics with the same rounded length are resampled together; the others independently, which
   loses their dependence and only makes the family-wise thresholds below more conservative.
2. With each replicate window the reference itself is resampled the same way (N samples) and its
   proportions, means, stds, priors and per-class statistics are recomputed on the fixed edges; the
   replicate window is scored against the replicate reference, so the thresholds include the noise
   of a finite reference, not only that of a window.
3. Every score of every metric is computed for every replicate, vectorised: a replicate is a count
   vector over the reference samples (or a few stretches of running sums) times a per-sample
   feature matrix, and the scores are the very functions of ``monitoring.scores`` the detector uses.
4. The thresholds are family-wise (Westfall–Young min-p): each score's upper tail over the replicates
   is smoothed (empirical, with a generalised Pareto tail fitted to its top 10 %, exponential when
   the fit is lighter, so the extreme levels come from a fit rather than the one or two largest
   replicates); each replicate's smallest tail probability over all its scores is taken, p* is the
   ``ALPHA`` quantile of those, and every score's threshold is the value with tail probability p*.
   So a share ``ALPHA`` of the bootstrap windows has ANY drift score over its threshold. The
   one-sided decay scores (``drop``) are a second family, calibrated the same way.
5. A mean shift must also reach one ``STD_FLOOR`` (the metric's resolution); a metric that was
   constant in the reference is scored by its mean shift only (PSI and JS of one bin say nothing more).

``ALPHA`` = 0.0005 (with B = 4000) is what keeps held-out windows of the reference's own process well
under the 1 % false-alarm target. The bootstrap only sees what 2000 autocorrelated samples show, so
real windows exceed more often than the nominal level: over 8 references of a camera-like stream
(AR(1) scene factors, phi 0.6; windows of 30, 120 and 300 samples) ALPHA 0.003 gave 0.6-0.9 % on
average and up to 1.4 % for an unlucky reference, 0.001 gave 0.2-0.4 % (at most 0.7 %), 0.0005 gives
0.1-0.35 % (at most 0.55 %), for detector and classifier streams alike.

That margin holds only for a scene whose memory is short compared with the reference. Measured
again with 12 other references of 2000 samples per shape (the share of held-out windows with any
drift score over its threshold, pooled, for windows of 30, 60, 120 and 300 samples; tests/test_drift.py
checks the first two shapes and the expected failure of the 0.95 one with 4 references each):
AR(1) phi 0.6: 0.2-0.35 % (classifier 0.1-0.4 %); the same plus a level switching every ~10 samples
(bimodal): 0.35-0.55 % (8 references); a sum of AR(1)s 0.6 and 0.8: 0.4-0.9 %; AR(1) 0.8:
0.6-0.95 %; AR(1) 0.9: 1.15-1.85 %; a sum of AR(1)s 0.6 and 0.95: 2.5-4.9 %, and still 0.7-1.9 % from
6000 samples; AR(1) 0.6 with Student-t(3) innovations (heavy tails, which the mean shifts of the
clipped fractions and of sharpness feel): 0.85-1.3 % (8 references). So the 1 % per window holds
when the scene's factors forget within about ten samples (seconds at 1 fps) of a 2000-sample
reference; a scene with slower components (lighting that drifts over minutes, people who stay)
exceeds it, and a longer reference helps only slowly (its block grows with it). Alerts need K
consecutive drifted windows, and exceedances rarely come in runs: with K = 3, the AR(1) 0.6 and 0.9
streams raised no alert in 22,000 held-out windows each and the 0.6 + 0.95 one 0.025-0.05 % per
window. Building takes about a second for 2000 samples and four sizes on a desktop core.

``thresholds_for(n)`` interpolates between the two nearest sizes on a log-log scale (PSI and JS fall
as ~1/n, shifts as ~1/sqrt(n), both straight lines there), keeps the largest size's thresholds beyond
it (conservative: the reference's own noise does not shrink with n) and gives None below the smallest.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import BundleError
from monitoring import scores
from monitoring.frame_stats import IMAGE_METRICS, METRICS, Sample

Array = npt.NDArray[np.float64]

SCHEMA = 1
WINDOW_SIZES = (30, 60, 120, 300)  # samples; thresholds are bootstrapped for each
BINS = 10
MIN_BIN_SHARE = 0.02
ALPHA = 0.0005  # family-wise share of bootstrap windows with any score over its threshold
REPLICATES = 4000
MIN_STRETCHES = 50  # samples ÷ block below this: thresholds too tight for the scene (stretches_note)
SEED = 20260917  # the default bootstrap seed: the same samples give the same profile
MIN_SAMPLES = 60
PRESENT_SHARE = 0.9  # a metric is profiled when it is finite in this share of the samples
MAX_PRIORS = 100
MAX_DECAY_LABELS = 16
DECAY_MIN_SHARE = 0.1  # a label gets decay statistics when it is seen in this many samples' worth
MIN_DECAY_COUNT = 30
MIN_LABEL_COUNT = 5  # a window scores a label's confidence only with this many of its scores
TAIL_SHARE = 0.1  # each score's top 10 % of replicates is fitted with a generalised Pareto tail
MIN_TAIL = 50
MAX_TAIL_SHAPE = 0.5
STD_FLOOR: dict[str, float] = {
    "brightness": 0.5,
    "contrast": 0.5,
    "sharpness": 0.01,  # of log1p(sharpness)
    "dark_fraction": 0.002,
    "bright_fraction": 0.002,
    "saturation": 0.5,
    "confidence": 0.005,
    "margin": 0.005,
    "entropy": 0.005,
    "detections": 0.05,
    "chars": 0.05,
}
LOG_METRICS = ("sharpness",)  # mean and std (and so the mean shift) of log1p(value): heavy-tailed
CONF_STD_FLOOR = 0.005
RATE_STD_FLOOR = 0.05

DRIFT_SCORES = ("psi", "js", "mean_shift")  # per metric; "classes:linf" for the class mix
DECAY_SCORE = "drop"
CLASSES = "classes"
ORIGINS = ("bundle", "learned")
KINDS = ("classes", "detections", "text", "outputs")
RESULT_METRICS_FOR = {
    "classes": ("confidence", "margin", "entropy"),
    "detections": ("confidence", "detections"),
    "text": ("confidence", "margin", "entropy", "chars"),
}
REQUIRED_METRICS = (*IMAGE_METRICS, "confidence")

# parse limits (the manifest is untrusted)
MAX_EDGES = 31  # 32 bins
MAX_LABELS = 1000
# ota.protocol.MAX_LABEL_CHARS: the MQTT builders cut a longer label (two could collide on the wire)
MAX_LABEL_LEN = 128
MAX_KEY_LEN = MAX_LABEL_LEN + 32  # any other object key ("confidence:<label>:drop")
MAX_SIZES = 8
MAX_WINDOW = 100_000
MAX_SAMPLES = 10**9
MAX_BLOCK = 10_000
MAX_REPLICATES = 1_000_000
MAX_ABS = 1e12
MIN_STD = 1e-12
SUM_TOLERANCE = 1e-3
# the bootstrap group of a detector's confidence over the samples with a box
DETECTED_CONF = "confidence#detected"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReferenceError(BundleError):
    """A reference profile that is malformed or does not fit the model; ``reason`` says which."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        # "malformed" | "wrong_kind" | "wrong_classes" | "missing_metrics" | "too_few_samples"
        self.reason = reason


def key(metric: str, score: str) -> str:
    """The thresholds key of a score: ``"brightness:psi"``, ``"confidence:face:drop"``."""
    return f"{metric}:{score}"


def label_ok(label: str) -> bool:
    """Whether a label is profiled: 1..``MAX_LABEL_LEN`` characters, no control characters, valid
    Unicode. Such a label crosses the wire unchanged (``ota.protocol`` cuts longer labels to 128
    characters and replaces control characters), so two of them never share a metric key there."""
    if not 1 <= len(label) <= MAX_LABEL_LEN or _CONTROL.search(label):
        return False
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def split_key(k: str) -> tuple[str, str]:
    """``(metric, score)`` of a thresholds key (the score is after the last colon)."""
    metric, _, score = k.rpartition(":")
    return metric, score


@dataclass(frozen=True)
class MetricReference:
    """One metric's reference: interior bin edges (bins = len(edges) + 1), proportions, mean, std
    (mean and std of ``shift_scale``: log1p for ``LOG_METRICS``)."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    mean: float
    std: float  # floored at STD_FLOOR

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def constant(self) -> bool:
        """The reference (nearly) never left one value: only its mean shift is scored, not PSI or JS."""
        return self.bins == 2 and self.proportions[1] <= 2 * scores.PROPORTION_FLOOR

    @property
    def score_names(self) -> tuple[str, ...]:
        return ("mean_shift",) if self.constant else DRIFT_SCORES

    def bin_index(self, values: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Bin of each value: i where edges[i-1] < x <= edges[i] (0 below the first edge, bins-1 above)."""
        return np.searchsorted(
            np.asarray(self.edges, np.float64), np.asarray(values, np.float64), side="left"
        )

    def counts(self, values: npt.ArrayLike) -> Array:
        """Bin counts of ``values``."""
        return np.bincount(self.bin_index(values), minlength=self.bins).astype(np.float64)

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "mean": self.mean,
            "std": self.std,
        }


@dataclass(frozen=True)
class ReferenceProfile:
    """What normal looks like for one model version, and the thresholds per window size (see above)."""

    metrics: dict[str, MetricReference]
    class_priors: dict[str, float]  # label -> share of all labels
    class_conf: dict[str, tuple[float, float]]  # label -> (mean, std) of its scores
    thresholds: dict[int, dict[str, float]]  # window size -> {"brightness:psi": t, "classes:linf": t, ...}
    samples: int
    origin: str  # "bundle" | "learned"
    kind: str = "outputs"  # the model's Result kind: "classes" | "detections" | "text" | "outputs"
    # detectors: label -> (mean, std) of its boxes per sample (the detection rate)
    class_rate: dict[str, tuple[float, float]] = field(default_factory=dict)
    block: int = 1  # the longest moving-block bootstrap block length used (samples)
    alpha: float = ALPHA
    replicates: int = REPLICATES
    # detectors: (mean, std) of the confidence of the samples with at least one box (its decay); None
    # when the reference had too few of them (or was made before this was measured)
    detected_conf: tuple[float, float] | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self.thresholds))

    def decay_metrics(self) -> tuple[str, ...]:
        """The one-sided decay metrics: confidence, confidence:<label>, rate:<label>."""
        confidence = "confidence" in self.metrics and (
            self.kind != "detections" or self.detected_conf is not None
        )
        out = ["confidence"] if confidence else []
        out += [f"confidence:{label}" for label in self.class_conf]
        out += [f"rate:{label}" for label in self.class_rate]
        return tuple(out)

    def drift_keys(self) -> tuple[str, ...]:
        out = [key(m, s) for m, r in self.metrics.items() for s in r.score_names]
        if self.class_priors:
            out.append(key(CLASSES, "linf"))
        return tuple(out)

    def decay_keys(self) -> tuple[str, ...]:
        return tuple(key(m, DECAY_SCORE) for m in self.decay_metrics())

    @property
    def stretches_note(self) -> str | None:
        """A warning when the reference holds too few independent stretches of scene (samples ÷
        bootstrap block under ``MIN_STRETCHES``): its thresholds then undercount how much a slow
        scene varies, and false alarms above 1 % a window are likely. None when it holds enough."""
        stretches = self.samples / max(1, self.block)
        if stretches >= MIN_STRETCHES:
            return None
        return (
            f"its {self.samples} samples hold only about {stretches:.0f} independent stretches of scene "
            f"(the scene changes every ~{self.block} samples): more than 1 % of windows may drift by "
            f"chance; give a reference of about {MIN_STRETCHES * self.block} samples, "
            "or of scenes that change faster"
        )

    def notes(self) -> list[str]:
        """Warnings about what this profile can judge (``stretches_note``, ``decay_note``)."""
        out = [self.stretches_note] if self.stretches_note else []
        if self.decay_note:
            out.append(f"it cannot suggest retraining: {self.decay_note}")
        return out

    @property
    def decay_ready(self) -> bool:
        """Whether every window size has the decay thresholds the model's kind needs (``decay_note``)."""
        return self.decay_note is None

    @property
    def decay_note(self) -> str | None:
        """What the profile lacks to suggest retraining, for a warning; None when it lacks nothing.

        Every kind needs ``confidence:drop`` (a detector's over the samples with a box); a detector
        also needs ``rate:<label>:drop`` for at least one label, or fewer detections go unjudged.
        """
        if not self.thresholds:
            return "it has no thresholds"
        tables = self.thresholds.values()
        gaps = []
        if not all(key("confidence", DECAY_SCORE) in t for t in tables):
            gaps.append(
                "no confidence decay (too few samples with a box in the reference)"
                if self.kind == "detections"
                else "no confidence decay"
            )
        if self.kind == "detections" and not any(
            all(key(f"rate:{label}", DECAY_SCORE) in t for t in tables) for label in self.class_rate
        ):
            gaps.append(
                f"no detection-rate decay (no label in {DECAY_MIN_SHARE:.0%} of the reference's samples)"
            )
        if not gaps:
            return None
        return (
            f"the reference cannot suggest retraining on all it should: {'; '.join(gaps)}; "
            "rebuild it from frames that show what the model detects"
        )

    def thresholds_for(self, n: int) -> dict[str, float] | None:
        """Thresholds for a window of ``n`` samples (see the module docstring); None below the smallest."""
        sizes = self.sizes
        if not sizes or n < sizes[0]:
            return None
        if n in self.thresholds:
            return dict(self.thresholds[n])
        if n > sizes[-1]:
            return dict(self.thresholds[sizes[-1]])
        hi = next(s for s in sizes if s > n)
        lo = max(s for s in sizes if s < n)
        t_lo, t_hi = self.thresholds[lo], self.thresholds[hi]
        out: dict[str, float] = {}
        f = math.log(n / lo) / math.log(hi / lo)
        for k in t_lo.keys() & t_hi.keys():
            a, b = t_lo[k], t_hi[k]
            if a > 0 and b > 0:
                out[k] = math.exp(math.log(a) + f * (math.log(b) - math.log(a)))
            else:
                out[k] = a + f * (b - a)
        return out

    def to_json(self) -> dict[str, Any]:
        """What the manifest's ``reference`` holds (schema 1; ``detected_conf`` only when there is one)."""
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "origin": self.origin,
            "kind": self.kind,
            "samples": self.samples,
            "block": self.block,
            "alpha": self.alpha,
            "replicates": self.replicates,
            "metrics": {m: r.to_json() for m, r in self.metrics.items()},
            "class_priors": dict(self.class_priors),
            "class_conf": {k: list(v) for k, v in self.class_conf.items()},
            "class_rate": {k: list(v) for k, v in self.class_rate.items()},
            "thresholds": {str(n): dict(t) for n, t in sorted(self.thresholds.items())},
        }
        if self.detected_conf is not None:
            doc["detected_conf"] = list(self.detected_conf)
        return doc


# ---------------------------------------------------------------------------------------------- building


def build_reference(
    samples: Sequence[Sample],
    *,
    window_sizes: Sequence[int] = WINDOW_SIZES,
    origin: str = "bundle",
    rng: np.random.Generator | None = None,
    bins: int = BINS,
    alpha: float = ALPHA,
    replicates: int = REPLICATES,
) -> ReferenceProfile:
    """The reference profile of ``samples`` (in capture order) with bootstrapped thresholds.

    Thresholds are made for the sizes of ``window_sizes`` up to the number of samples. Raises
    ``ReferenceError`` ("too_few_samples", "missing_metrics") when the samples cannot make one.
    """
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    if not 2 <= bins <= MAX_EDGES + 1:
        raise ValueError(f"bins must be 2..{MAX_EDGES + 1}, got {bins}")
    if not 0 < alpha < 0.5 or replicates < 100 or alpha * replicates < 2:
        raise ValueError(
            f"need 0 < alpha < 0.5, 100+ replicates and alpha * replicates >= 2, got {alpha}, {replicates}"
        )
    all_sizes = sorted({int(s) for s in window_sizes})
    if not all_sizes or all_sizes[0] < 2 or all_sizes[-1] > MAX_WINDOW:
        raise ValueError(f"window sizes must be 2..{MAX_WINDOW}, got {window_sizes!r}")
    n = len(samples)
    if n < max(MIN_SAMPLES, all_sizes[0]):
        raise ReferenceError(
            f"a reference needs at least {max(MIN_SAMPLES, all_sizes[0])} sample frames, got {n}: "
            "give more frames (a longer video or more images)",
            "too_few_samples",
        )
    sizes = tuple(s for s in all_sizes if s <= n)
    kind = _kind(samples)
    table = {m: np.array([s.values.get(m, math.nan) for s in samples], np.float64) for m in _applicable(kind)}
    present = {m: np.isfinite(x) for m, x in table.items()}
    metrics = {
        m: _metric_reference(m, x[present[m]], bins)
        for m, x in table.items()
        if present[m].mean() >= PRESENT_SHARE
    }
    missing = [m for m in REQUIRED_METRICS if m not in metrics]
    if missing:
        raise ReferenceError(
            f"the sample frames lack {', '.join(missing)} in more than {1 - PRESENT_SHARE:.0%} of them: "
            "they cannot make a reference",
            "missing_metrics",
        )
    labels = _Labels.of(samples, kind)
    blocks = {m: _politis_white(np.where(present[m], table[m], np.nanmean(table[m]))) for m in metrics}
    if labels.priors or labels.conf:
        blocks[CLASSES] = max(_politis_white(x) for x in labels.series())
    detected_conf = None
    if kind == "detections" and "confidence" in metrics:
        detected = _detected(table)
        if np.count_nonzero(detected) >= MIN_DECAY_COUNT:
            conf = table["confidence"][detected]
            detected_conf = (float(conf.mean()), max(float(conf.std()), CONF_STD_FLOOR))
            blocks[DETECTED_CONF] = _politis_white(np.where(detected, table["confidence"], conf.mean()))
    profile = ReferenceProfile(
        metrics=metrics,
        class_priors=labels.priors,
        class_conf=labels.conf,
        thresholds={},
        samples=n,
        origin=origin,
        kind=kind,
        class_rate=labels.rate,
        block=max(blocks.values()),
        alpha=alpha,
        replicates=replicates,
        detected_conf=detected_conf,
    )
    design = _Design(profile, table, present, labels, blocks)
    thresholds = _bootstrap(design, profile, sizes, rng or np.random.default_rng(SEED))
    return dataclasses.replace(profile, thresholds=thresholds)


def _kind(samples: Sequence[Sample]) -> str:
    if any("chars" in s.values for s in samples):
        return "text"
    if any("margin" in s.values or "entropy" in s.values for s in samples):
        return "classes"
    if any("detections" in s.values for s in samples):
        return "detections"
    return "outputs"


def _applicable(kind: str) -> tuple[str, ...]:
    return (*IMAGE_METRICS, *RESULT_METRICS_FOR.get(kind, ("confidence",)))


def _detected(table: Mapping[str, Array]) -> npt.NDArray[np.bool_]:
    """The samples of a detector with at least one box and a confidence (``Window.detected_confidence``)."""
    conf, count = table["confidence"], table["detections"]
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = np.isfinite(conf) & np.isfinite(count) & (count >= 1)
    return out


def _metric_reference(metric: str, x: Array, bins: int) -> MetricReference:
    edges = _edges(x, bins)
    ref = MetricReference(edges=edges, proportions=(), mean=0.0, std=1.0)
    counts = ref.counts(x)
    y = shift_scale(metric, x)
    return MetricReference(
        edges=edges,
        proportions=tuple(float(p) for p in scores.floored(counts)),
        mean=float(y.mean()),
        std=max(float(y.std()), STD_FLOOR.get(metric, MIN_STD)),
    )


def shift_scale(metric: str, values: npt.ArrayLike) -> Array:
    """The scale a metric's mean shift is measured on: log1p for those spanning orders of magnitude."""
    x = np.asarray(values, np.float64)
    return np.log1p(np.maximum(x, 0.0)) if metric in LOG_METRICS else x


def _edges(x: Array, bins: int) -> tuple[float, ...]:
    """Interior edges on the quantiles of ``x`` such that every bin holds at least MIN_BIN_SHARE of it."""
    top = float(x.max())
    quantiles = np.quantile(x, np.arange(1, bins) / bins, method="inverted_cdf")
    edges = [float(e) for e in np.unique(quantiles) if e < top]
    if not edges:
        return (top,)  # constant: one bin holds everything, the one above is empty
    xs = np.sort(x)
    while len(edges) > 1:
        cum = np.searchsorted(xs, np.asarray(edges), side="right")
        counts = np.diff(np.concatenate(([0], cum, [xs.size])))
        j = int(np.argmin(counts))
        if counts[j] >= MIN_BIN_SHARE * xs.size:
            break
        if j == 0:
            drop = 0
        elif j == len(counts) - 1:
            drop = len(edges) - 1
        else:
            drop = j - 1 if counts[j - 1] <= counts[j + 1] else j  # the edge towards the smaller neighbour
        del edges[drop]
    return tuple(edges)


@dataclass
class _Labels:
    """Per-sample label statistics of the reference."""

    priors: dict[str, float]
    conf: dict[str, tuple[float, float]]
    rate: dict[str, tuple[float, float]]
    prior_counts: Array  # (N, len(priors)) count of each prior label per sample
    totals: Array  # (N,) labels per sample
    conf_sums: Array  # (N, len(conf)) standardised score sums, squares and counts per decay label
    conf_squares: Array
    conf_counts: Array
    rate_counts: Array  # (N, len(rate))

    @classmethod
    def of(cls, samples: Sequence[Sample], kind: str) -> _Labels:
        n = len(samples)
        per_sample = [  # finite scores, labels that cross the wire unchanged (as the detector counts)
            [(label, score) for label, score in s.labels if math.isfinite(score) and label_ok(label)]
            for s in samples
        ]
        counts: Counter[str] = Counter(label for labels in per_sample for label, _ in labels)
        total = sum(counts.values())
        ranked = counts.most_common()
        priors = {label: c / total for label, c in ranked[:MAX_PRIORS]} if kind != "outputs" and total else {}
        decay = [
            label
            for label, c in ranked[:MAX_DECAY_LABELS]
            if kind != "outputs" and c >= max(MIN_DECAY_COUNT, DECAY_MIN_SHARE * n)
        ]
        scores_of: dict[str, list[float]] = {label: [] for label in decay}
        for labels in per_sample:
            for label, score in labels:
                if label in scores_of:
                    scores_of[label].append(score)
        conf = {
            label: (float(np.mean(v)), max(float(np.std(v)), CONF_STD_FLOOR))
            for label, v in scores_of.items()
        }
        prior_index = {label: i for i, label in enumerate(priors)}
        decay_index = {label: i for i, label in enumerate(decay)}
        prior_counts = np.zeros((n, len(priors)))
        totals = np.zeros(n)
        conf_sums = np.zeros((n, len(decay)))
        conf_squares = np.zeros((n, len(decay)))
        conf_counts = np.zeros((n, len(decay)))
        for i, labels in enumerate(per_sample):
            totals[i] = len(labels)
            for label, score in labels:
                j = prior_index.get(label)
                if j is not None:
                    prior_counts[i, j] += 1
                j = decay_index.get(label)
                if j is not None:
                    mu, sd = conf[label]
                    z = (score - mu) / sd
                    conf_sums[i, j] += z
                    conf_squares[i, j] += z * z
                    conf_counts[i, j] += 1
        rate: dict[str, tuple[float, float]] = {}
        if kind == "detections":
            rate = {
                label: (float(conf_counts[:, j].mean()), max(float(conf_counts[:, j].std()), RATE_STD_FLOOR))
                for label, j in decay_index.items()
            }
        return cls(
            priors,
            conf,
            rate,
            prior_counts,
            totals,
            conf_sums,
            conf_squares,
            conf_counts,
            conf_counts[:, : len(rate)],
        )

    def series(self) -> list[Array]:
        """Per-sample series whose autocorrelation sets the labels' block length."""
        return [self.totals, *self.conf_counts.T, *self.conf_sums.T]


def _politis_white(x: Array) -> int:
    """Politis & White (2004) / Patton, Politis & White (2009) block length for the moving-block bootstrap."""
    n = x.size
    x = x - x.mean()
    var = float(x @ x) / n
    if n < 8 or var <= 1e-300:
        return 1
    kn = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = min(n - 1, math.ceil(math.sqrt(n)) + kn)
    spectrum = np.fft.rfft(x, 2 * n)
    acov = np.fft.irfft(spectrum * np.conj(spectrum))[: m_max + 1] / n
    rho = acov / acov[0]
    crit = 2 * math.sqrt(math.log10(n) / n)
    insignificant = np.abs(rho[1:]) < crit  # lags 1..m_max
    m_hat = m_max
    for m in range(0, m_max - kn + 1):
        if insignificant[m : m + kn].all():
            m_hat = m
            break
    big_m = min(2 * m_hat, m_max)
    if big_m == 0:
        return 1
    lags = np.arange(-big_m, big_m + 1)
    t = np.abs(lags) / big_m
    lam = np.where(t <= 0.5, 1.0, 2 * (1 - t))
    r = acov[np.abs(lags)]
    g_hat = float(np.sum(lam * np.abs(lags) * r))
    d_hat = 4.0 / 3.0 * float(np.sum(lam * r)) ** 2
    if d_hat <= 0:
        return 1
    b = math.pow(2 * g_hat**2 / d_hat * n, 1 / 3)
    b_max = math.ceil(min(3 * math.sqrt(n), n / 3))
    return max(1, min(b_max, round(b)))


class _Design:
    """The per-sample feature matrix: any resample's statistics are its count vector times this matrix.

    Columns come in groups (one per metric, one for the classes) that each have their own block
    length (every score reads one group only): an independent metric is not resampled in the long
    blocks an autocorrelated one needs, which would leave it few distinct windows to learn from.
    Groups with the same (rounded) length are resampled together, keeping their dependence; groups
    with different lengths independently, which makes the family-wise thresholds more conservative
    (as for independent scores), never lax.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        table: Mapping[str, Array],
        present: Mapping[str, npt.NDArray[np.bool_]],
        labels: _Labels,
        blocks: Mapping[str, int],
    ) -> None:
        n = profile.samples
        parts: list[Array] = []
        self.cols: dict[str, slice] = {}
        self.groups: dict[int, list[int]] = {}  # block length -> columns resampled with it

        def add(name: str, a: Array, group: str) -> None:
            a = a.reshape(n, -1)
            start = sum(b.shape[1] for b in parts)
            self.cols[name] = slice(start, start + a.shape[1])
            self.groups.setdefault(_block_class(blocks[group]), []).extend(range(start, start + a.shape[1]))
            parts.append(a)

        for m, ref in profile.metrics.items():
            ok = present[m]
            x = np.where(ok, table[m], ref.mean)
            onehot = np.zeros((n, ref.bins))
            onehot[np.flatnonzero(ok), ref.bin_index(x[ok])] = 1.0
            z = np.where(ok, (shift_scale(m, x) - ref.mean) / ref.std, 0.0)
            add(f"{m}#bins", onehot, m)
            add(f"{m}#n", ok.astype(np.float64), m)
            add(f"{m}#z", z, m)
            add(f"{m}#z2", z * z, m)
        if profile.class_priors:
            add("priors", labels.prior_counts, CLASSES)
            add("labels", labels.totals, CLASSES)
        if profile.class_conf:
            add("conf#n", labels.conf_counts, CLASSES)
            add("conf#z", labels.conf_sums, CLASSES)
            add("conf#z2", labels.conf_squares, CLASSES)
        if profile.class_rate:
            add("rate#n", labels.rate_counts, CLASSES)
            add("rate#n2", labels.rate_counts**2, CLASSES)
        if profile.detected_conf is not None:
            mu, sd = profile.detected_conf
            detected = _detected(table)
            z = np.where(detected, (np.where(detected, table["confidence"], mu) - mu) / sd, 0.0)
            add("detconf#n", detected.astype(np.float64), DETECTED_CONF)
            add("detconf#z", z, DETECTED_CONF)
            add("detconf#z2", z * z, DETECTED_CONF)
        self.matrix = np.ascontiguousarray(np.hstack(parts))
        self.width = self.matrix.shape[1]
        self._columns = {b: np.asarray(c) for b, c in self.groups.items()}
        self._prefix = {  # running sums: a block's features are the difference of two rows
            b: np.vstack([np.zeros((1, c.size)), np.cumsum(self.matrix[:, c], axis=0)])
            for b, c in self._columns.items()
        }

    def sums(self, rng: np.random.Generator, reps: int, length: int) -> Array:
        """Feature sums (reps, features) of ``reps`` moving-block resamples of ``length`` samples, each
        group with its block length (at most ``length``: a short window is one contiguous stretch)."""
        out = np.empty((reps, self.width))
        n = self.matrix.shape[0]
        for block, cols in self._columns.items():
            size = min(block, length)
            k = -(-length // size)
            starts = rng.integers(0, n - size + 1, size=(reps, k))
            if k > n // 4:  # many short blocks: a count vector per replicate times the matrix
                idx = (starts[:, :, None] + np.arange(size)).reshape(reps, k * size)[:, :length]
                flat = (idx + (np.arange(reps) * n)[:, None]).ravel()
                weights = np.bincount(flat, minlength=reps * n).reshape(reps, n).astype(np.float64)
                out[:, cols] = weights @ self.matrix[:, cols]
            else:  # few blocks: each is the difference of two running sums
                ends = starts + np.minimum(size, length - size * np.arange(k))
                prefix = self._prefix[block]
                out[:, cols] = prefix[ends].sum(axis=1) - prefix[starts].sum(axis=1)
        return out


def _block_class(block: int) -> int:
    """``block`` rounded up to 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (fewer groups; longer is safer)."""
    size = 1
    while size < block:
        size = size + 1 if size < 4 else size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def _bootstrap(
    design: _Design, profile: ReferenceProfile, sizes: Sequence[int], rng: np.random.Generator
) -> dict[int, dict[str, float]]:
    n, reps = profile.samples, profile.replicates
    chunk = max(16, min(reps, 2_000_000 // n))
    drift: dict[int, list[dict[str, Array]]] = {s: [] for s in sizes}
    decay: dict[int, list[dict[str, Array]]] = {s: [] for s in sizes}
    done = 0
    while done < reps:
        b = min(chunk, reps - done)
        ref = design.sums(rng, b, n)
        for size in sizes:
            win = design.sums(rng, b, size)
            d, c = replicate_scores(profile, design.cols, ref, win, n, size)
            drift[size].append(d)
            decay[size].append(c)
        done += b
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        t = {
            **family_thresholds(_stack(drift[size]), profile.alpha),
            **family_thresholds(_stack(decay[size]), profile.alpha),
        }
        for m, mref in profile.metrics.items():  # a shift must reach the metric's resolution
            k = key(m, "mean_shift")
            t[k] = max(t[k], STD_FLOOR.get(m, MIN_STD) / mref.std)
        out[size] = t
    return out


def _stack(parts: list[dict[str, Array]]) -> dict[str, Array]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def replicate_scores(
    profile: ReferenceProfile, cols: Mapping[str, slice], ref: Array, win: Array, n_ref: int, n_win: int
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Drift and decay scores of replicate windows (``win``) against replicate references (``ref``).

    ``ref`` and ``win`` are (replicates, features) sums over the samples drawn; scores that a window
    cannot have (a metric absent from it, too few of a label) are NaN.
    """
    drift: dict[str, Array] = {}
    decay: dict[str, Array] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for m, mref in profile.metrics.items():
            p = scores.floored(ref[:, cols[f"{m}#bins"]])
            counts = win[:, cols[f"{m}#bins"]]
            nr, nw = ref[:, cols[f"{m}#n"]][:, 0], win[:, cols[f"{m}#n"]][:, 0]
            mean_r = ref[:, cols[f"{m}#z"]][:, 0] / nr
            var_r = ref[:, cols[f"{m}#z2"]][:, 0] / nr - mean_r**2
            std_r = np.maximum(np.sqrt(np.maximum(var_r, 0.0)), STD_FLOOR.get(m, MIN_STD) / mref.std)
            mean_w = win[:, cols[f"{m}#z"]][:, 0] / nw
            absent = nw <= 0
            if not mref.constant:
                drift[key(m, "psi")] = np.where(absent, np.nan, scores.psi(p, counts))
                drift[key(m, "js")] = np.where(absent, np.nan, scores.js_bits(p, counts))
            drift[key(m, "mean_shift")] = np.where(absent, np.nan, scores.mean_shift(mean_r, std_r, mean_w))
            if m == "confidence" and profile.kind != "detections":
                decay[key(m, DECAY_SCORE)] = np.where(absent, np.nan, scores.drop(mean_r, std_r, mean_w))
        if profile.detected_conf is not None:  # a detector's: over the samples with a box
            sd = profile.detected_conf[1]
            cr, cw = ref[:, cols["detconf#n"]][:, 0], win[:, cols["detconf#n"]][:, 0]
            mean_r = ref[:, cols["detconf#z"]][:, 0] / cr
            var_r = ref[:, cols["detconf#z2"]][:, 0] / cr - mean_r**2
            std_r = np.maximum(np.sqrt(np.maximum(var_r, 0.0)), CONF_STD_FLOOR / sd)
            mean_w = win[:, cols["detconf#z"]][:, 0] / cw
            ok = (cw >= MIN_LABEL_COUNT) & (cr > 0)
            decay[key("confidence", DECAY_SCORE)] = np.where(ok, scores.drop(mean_r, std_r, mean_w), np.nan)
        if profile.class_priors:
            tr, tw = ref[:, cols["labels"]], win[:, cols["labels"]]
            priors = ref[:, cols["priors"]] / tr
            mix = win[:, cols["priors"]] / tw
            drift[key(CLASSES, "linf")] = np.where(
                (tw[:, 0] > 0) & (tr[:, 0] > 0), scores.linf(priors, mix), np.nan
            )
        for j, (label, (_, sd)) in enumerate(profile.class_conf.items()):
            cr, cw = ref[:, cols["conf#n"]][:, j], win[:, cols["conf#n"]][:, j]
            mean_r = ref[:, cols["conf#z"]][:, j] / cr
            var_r = ref[:, cols["conf#z2"]][:, j] / cr - mean_r**2
            std_r = np.maximum(np.sqrt(np.maximum(var_r, 0.0)), CONF_STD_FLOOR / sd)
            mean_w = win[:, cols["conf#z"]][:, j] / cw
            ok = (cw >= MIN_LABEL_COUNT) & (cr > 0)
            decay[key(f"confidence:{label}", DECAY_SCORE)] = np.where(
                ok, scores.drop(mean_r, std_r, mean_w), np.nan
            )
        for j, (label, (mu, sd)) in enumerate(profile.class_rate.items()):
            counts_r = ref[:, cols["rate#n"]][:, j]
            mean_r = (counts_r / n_ref - mu) / sd
            var_r = ref[:, cols["rate#n2"]][:, j] / n_ref - (counts_r / n_ref) ** 2
            std_r = np.maximum(np.sqrt(np.maximum(var_r, 0.0)), RATE_STD_FLOOR) / sd
            mean_w = (win[:, cols["rate#n"]][:, j] / n_win - mu) / sd
            decay[key(f"rate:{label}", DECAY_SCORE)] = scores.drop(mean_r, std_r, mean_w)
    return drift, decay


def family_thresholds(columns: Mapping[str, Array], alpha: float) -> dict[str, float]:
    """Per-score thresholds such that a share ``alpha`` of the replicates has ANY score over its threshold.

    Each score gets a smoothed tail probability (``_Tail``: empirical, with a generalised Pareto upper
    tail); p* is the ``alpha`` quantile of each replicate's smallest tail probability (min-p, as in
    Westfall & Young), and every score's threshold is the value its tail probability p* corresponds
    to. NaN in a column: the score does not apply to that replicate (it never exceeds).
    """
    if not columns:
        return {}
    tails = {k: _Tail(v) for k, v in columns.items()}
    reps = len(next(iter(columns.values())))
    min_p = np.min(np.column_stack([tails[k].survival(v) for k, v in columns.items()]), axis=1)
    p_star = float(np.sort(min_p)[int(alpha * reps)])  # at most floor(alpha * reps) replicates are below it
    return {k: t.value_at(p_star) for k, t in tails.items() if t.sorted.size}


class _Tail:
    """The upper tail of one score over the replicates: ``survival(s)`` = share of replicates above s.

    Empirical up to the top ``TAIL_SHARE``, a generalised Pareto distribution above it (fitted with
    probability-weighted moments, Hosking & Wallis 1987), so the extreme levels a family of tens of
    scores needs are read from a fitted tail rather than from the one or two largest replicates.
    """

    def __init__(self, column: Array) -> None:
        self.reps = column.size
        self.sorted = np.sort(column[np.isfinite(column)])
        m = self.sorted.size
        self.n_tail = int(TAIL_SHARE * m)
        self.u0 = float(self.sorted[m - self.n_tail - 1]) if m > self.n_tail else 0.0
        self.sigma = 0.0  # 0: no fitted tail (too few replicates or no spread)
        self.shape = 0.0
        if self.n_tail < MIN_TAIL:
            return
        excess = self.sorted[m - self.n_tail :] - self.u0
        a0 = float(excess.mean())
        p = (np.arange(1, self.n_tail + 1) - 0.35) / self.n_tail
        a1 = float(np.mean((1 - p) * excess))
        if a0 <= 0 or a0 - 2 * a1 <= 0:
            return
        shape = 2 - a0 / (a0 - 2 * a1)
        if shape <= 0:  # light or bounded: an exponential tail (conservative; no endpoint near the data)
            self.sigma, self.shape = a0, 0.0
        else:
            self.sigma, self.shape = 2 * a0 * a1 / (a0 - 2 * a1), min(shape, MAX_TAIL_SHAPE)

    def survival(self, s: Array) -> Array:
        """The share of replicates at or above ``s`` (inf for NaN: a score that does not apply)."""
        above = (self.sorted.size - np.searchsorted(self.sorted, s, side="left")) / self.reps
        if self.sigma <= 0:
            return np.where(np.isfinite(s), above, np.inf)
        x = np.maximum(np.nan_to_num(s, nan=-np.inf) - self.u0, 0.0)
        if abs(self.shape) < 1e-9:
            gpd = np.exp(-x / self.sigma)
        else:
            gpd = np.maximum(1 + self.shape * x / self.sigma, 0.0) ** (-1 / self.shape)
        tail = self.n_tail / self.reps * gpd
        return np.where(np.isnan(s), np.inf, np.where(s > self.u0, tail, above))

    def value_at(self, p: float) -> float:
        """The smallest score that less than a share ``p`` of the replicates lies above."""
        fitted = self.sigma > 0 and p < self.n_tail / self.reps
        if not fitted:
            allowed = max(math.ceil(p * self.reps - 1e-9) - 1, 0)  # replicates that may lie above it
            return float(self.sorted[max(self.sorted.size - allowed - 1, 0)])
        r = max(p * self.reps / self.n_tail, 1e-300)
        if abs(self.shape) < 1e-9:
            return self.u0 - self.sigma * math.log(r)
        return float(self.u0 + self.sigma / self.shape * (r ** (-self.shape) - 1))


# ---------------------------------------------------------------------------------------------- parsing


def parse_reference(
    obj: Any, *, labels: Sequence[str] = (), kind: str | None = None, where: str = "reference"
) -> ReferenceProfile:
    """A ``ReferenceProfile`` from the manifest's ``reference`` (untrusted): strict about every field.

    ``labels``: the model's labels; when given, a profile naming other classes is refused
    ("wrong_classes"). ``kind``: the model's Result kind ("classes" | "detections" | "text" | "outputs");
    when given, a profile made for another kind is refused ("wrong_kind": a classifier's profile
    on a detector would never score its detections). Raises ``ReferenceError`` with ``reason``
    "malformed", "wrong_kind", "missing_metrics" or "wrong_classes" (checked in that order).

    ``detected_conf`` is optional (detector profiles only): a detector profile made before it was
    measured parses without it, and its ``confidence:drop`` threshold, calibrated on the mean over
    every sample, is left out; ``decay_ready`` is then False.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return _Parser(where).profile(obj, labels, kind)


class _Parser:
    FIELDS = frozenset(
        (
            "schema",
            "origin",
            "kind",
            "samples",
            "block",
            "alpha",
            "replicates",
            "metrics",
            "class_priors",
            "class_conf",
            "class_rate",
            "thresholds",
        )
    )
    OPTIONAL = frozenset(("detected_conf",))

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str, reason: str = "malformed") -> ReferenceError:
        return ReferenceError(
            f"{self.where}: {what}; rebuild the reference (edge-agent bundle create --reference)", reason
        )

    def number(self, v: Any, what: str, lo: float = -MAX_ABS, hi: float = MAX_ABS) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{what} must be a number, got {_short(v)}")
        if isinstance(v, int) and not -MAX_ABS <= v <= MAX_ABS:
            raise self.fail(f"{what} is out of range")
        f = float(v)
        if not math.isfinite(f) or not lo <= f <= hi:
            raise self.fail(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {_short(v)}")
        return f

    def integer(self, v: Any, what: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(f"{what} must be an integer in [{lo}, {hi}], got {_short(v)}")
        return v

    def obj(self, v: Any, what: str, limit: int) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(f"{what} must be an object, got {_short(v)}")
        if len(v) > limit:
            raise self.fail(f"{what} has {len(v)} entries, over the limit of {limit}")
        for k in v:
            if not isinstance(k, str) or len(k) > MAX_KEY_LEN:
                raise self.fail(f"{what} has a bad key {_short(k)}")
        return v

    def labelled(self, v: Any, what: str) -> dict[str, Any]:
        """An object keyed by labels: each one ``label_ok`` (what crosses the wire unchanged)."""
        d = self.obj(v, what, MAX_LABELS)
        for k in d:
            if not label_ok(k):
                raise self.fail(
                    f"{what} has a bad label {_short(k)} "
                    f"(1-{MAX_LABEL_LEN} characters, no control characters)"
                )
        return d

    def numbers(self, v: Any, what: str, lo: int, hi: int) -> list[float]:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise self.fail(f"{what} must be a list of {lo}..{hi} numbers, got {_short(v)}")
        return [self.number(x, f"{what}[{i}]") for i, x in enumerate(v)]

    def metric(self, name: str, v: Any) -> MetricReference:
        d = self.obj(v, f"metrics.{name}", 16)
        if set(d) != {"edges", "proportions", "mean", "std"}:
            raise self.fail(f"metrics.{name} must hold exactly edges, proportions, mean and std")
        edges = self.numbers(d["edges"], f"metrics.{name}.edges", 1, MAX_EDGES)
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise self.fail(f"metrics.{name}.edges must be strictly increasing")
        props = self.numbers(d["proportions"], f"metrics.{name}.proportions", len(edges) + 1, len(edges) + 1)
        if any(not 0 <= p <= 1 for p in props) or abs(sum(props) - 1) > SUM_TOLERANCE:
            raise self.fail(f"metrics.{name}.proportions must be in [0, 1] and sum to 1")
        mean = self.number(d["mean"], f"metrics.{name}.mean")
        std = self.number(d["std"], f"metrics.{name}.std", MIN_STD)
        return MetricReference(tuple(edges), tuple(props), mean, std)

    def pair(self, v: Any, what: str, lo: float) -> tuple[float, float]:
        mean, std = self.numbers(v, what, 2, 2)
        self.number(mean, f"{what} mean", lo)
        self.number(std, f"{what} std", MIN_STD)
        return mean, std

    def pairs(self, v: Any, what: str, lo: float) -> dict[str, tuple[float, float]]:
        d = self.labelled(v, what)
        return {label: self.pair(pair, f"{what}.{label}", lo) for label, pair in d.items()}

    def profile(self, obj: Any, labels: Sequence[str], want_kind: str | None) -> ReferenceProfile:
        d = self.obj(obj, "the reference", 64)
        if not self.FIELDS <= set(d) <= self.FIELDS | self.OPTIONAL:
            missing, extra = sorted(self.FIELDS - set(d)), sorted(set(d) - self.FIELDS - self.OPTIONAL)
            raise self.fail(
                f"the reference must hold exactly {', '.join(sorted(self.FIELDS))} "
                f"and may hold {', '.join(sorted(self.OPTIONAL))} (missing: {missing}, unknown: {extra})"
            )
        if self.integer(d["schema"], "schema", 0, 1_000_000) != SCHEMA:
            raise self.fail(f"schema {d['schema']} is not supported (this agent reads schema {SCHEMA})")
        origin, kind = d["origin"], d["kind"]
        if origin not in ORIGINS:
            raise self.fail(f"origin must be one of {', '.join(ORIGINS)}, got {_short(origin)}")
        if kind not in KINDS:
            raise self.fail(f"kind must be one of {', '.join(KINDS)}, got {_short(kind)}")
        samples = self.integer(d["samples"], "samples", 1, MAX_SAMPLES)
        block = self.integer(d["block"], "block", 1, MAX_BLOCK)
        alpha = self.number(d["alpha"], "alpha", 1e-9, 0.5)
        replicates = self.integer(d["replicates"], "replicates", 1, MAX_REPLICATES)
        raw_metrics = self.obj(d["metrics"], "metrics", len(METRICS))
        unknown = [m for m in raw_metrics if m not in METRICS]
        if unknown:
            raise self.fail(f"metrics names unknown metric(s) {', '.join(map(repr, unknown))}")
        foreign_metrics = [m for m in raw_metrics if m in METRICS and m not in _applicable(kind)]
        if foreign_metrics:
            raise self.fail(f"metrics {', '.join(map(repr, foreign_metrics))} do not apply to a {kind} model")
        metrics = {m: self.metric(m, raw_metrics[m]) for m in METRICS if m in raw_metrics}
        priors_raw = self.labelled(d["class_priors"], "class_priors")
        priors = {label: self.number(p, f"class_priors.{label}", 0, 1) for label, p in priors_raw.items()}
        if sum(priors.values()) > 1 + SUM_TOLERANCE:
            raise self.fail("class_priors must sum to at most 1")
        conf = self.pairs(d["class_conf"], "class_conf", -MAX_ABS)
        rate = self.pairs(d["class_rate"], "class_rate", 0)
        if rate and kind != "detections":
            raise self.fail(f"class_rate (detections per sample) does not apply to a {kind} model")
        detected_conf = None
        if "detected_conf" in d:
            if kind != "detections":
                raise self.fail(
                    f"detected_conf (confidence over samples with a box) does not apply to a {kind} model"
                )
            detected_conf = self.pair(d["detected_conf"], "detected_conf", -MAX_ABS)
        profile = ReferenceProfile(
            metrics,
            priors,
            conf,
            {},
            samples,
            origin,
            kind,
            rate,
            block,
            alpha,
            replicates,
            detected_conf=detected_conf,
        )
        thresholds = self.thresholds(d["thresholds"], profile)
        if want_kind is not None and kind != want_kind:
            raise self.fail(
                f"it was made for a model whose results are {kind}, but this model's are {want_kind}",
                "wrong_kind",
            )
        missing = [m for m in REQUIRED_METRICS if m not in metrics]
        if missing:
            raise self.fail(f"it lacks the metric(s) {', '.join(missing)}", "missing_metrics")
        if labels:
            known = set(labels)
            foreign = sorted({*priors, *conf, *rate} - known)
            if foreign:
                shown = ", ".join(repr(f) for f in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
                raise self.fail(f"it names class(es) the model does not have: {shown}", "wrong_classes")
        return dataclasses.replace(profile, thresholds=thresholds)

    def thresholds(self, v: Any, profile: ReferenceProfile) -> dict[int, dict[str, float]]:
        d = self.obj(v, "thresholds", MAX_SIZES)
        if not d:
            raise self.fail("thresholds must hold at least one window size")
        required = {
            key(m, s) for m, r in profile.metrics.items() for s in r.score_names
        }  # the others may be absent
        allowed = set(profile.drift_keys()) | set(profile.decay_keys())
        # a detector profile made before detected_conf: its confidence:drop is of the mean over every
        # sample (0 for no box), a statistic the detector no longer computes; it is left out
        stale = (
            {key("confidence", DECAY_SCORE)}
            if profile.kind == "detections" and profile.detected_conf is None
            else set()
        )
        out: dict[int, dict[str, float]] = {}
        for size_text, table in d.items():
            if not (size_text.isascii() and size_text.isdigit() and str(int(size_text)) == size_text):
                raise self.fail(f"thresholds: window size {_short(size_text)} is not a plain integer")
            size = self.integer(int(size_text), "thresholds window size", 2, MAX_WINDOW)
            t = self.obj(table, f"thresholds.{size}", len(allowed) + 8)
            t = {k: x for k, x in t.items() if k not in stale}
            extra, absent = sorted(set(t) - allowed), sorted(required - set(t))
            if extra or absent:
                raise self.fail(
                    f"thresholds.{size} must hold the scores of the profile's metrics "
                    f"(unknown: {extra[:5]}, missing: {absent[:5]})"
                )
            out[size] = {k: self.number(x, f"thresholds.{size}.{k}", 0) for k, x in t.items()}
        return dict(sorted(out.items()))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."

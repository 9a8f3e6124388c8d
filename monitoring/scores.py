"""The drift and decay scores, vectorised: one code path for the detector (one window) and the bootstrap.

Every function takes reference parameters and window statistics whose leading axes broadcast, so the
bootstrap in ``monitoring.reference`` scores thousands of replicate windows at once with the very
formulas ``monitoring.drift`` applies to a live window.

- ``psi``: population stability index, natural log, window proportions smoothed with half a count per
  bin (Krichevsky–Trofimov) so an empty bin gives a finite score: sum (q - p) ln(q / p).
- ``js_bits``: Jensen–Shannon divergence in bits (log base 2, so 0..1) of the raw window proportions.
- ``mean_shift``: |window mean - reference mean| in reference standard deviations.
- ``drop``: (reference mean - window mean) in reference standard deviations: positive when it fell.
- ``linf``: the largest absolute difference between the window's class mix and the class priors.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

PROPORTION_FLOOR = 1e-4  # reference bin proportions are floored at this (then renormalised)
SMOOTHING = 0.5  # pseudo-count per bin added to the window counts for PSI


def floored(counts: Array) -> Array:
    """Proportions along the last axis from ``counts``, floored at PROPORTION_FLOOR and renormalised."""
    total = counts.sum(axis=-1, keepdims=True)
    p = np.maximum(counts / np.where(total > 0, total, 1.0), PROPORTION_FLOOR)
    out: Array = p / p.sum(axis=-1, keepdims=True)
    return out


def psi(p_ref: Array, counts: Array) -> Array:
    """PSI (natural log) of window bin ``counts`` against reference proportions ``p_ref`` (last axis)."""
    bins = counts.shape[-1]
    n = counts.sum(axis=-1, keepdims=True)
    q = (counts + SMOOTHING) / (n + SMOOTHING * bins)
    out: Array = ((q - p_ref) * np.log(q / p_ref)).sum(axis=-1)
    return out


def js_bits(p_ref: Array, counts: Array) -> Array:
    """Jensen–Shannon divergence in bits (0..1) between the window proportions and ``p_ref``."""
    n = counts.sum(axis=-1, keepdims=True)
    q = counts / np.where(n > 0, n, 1.0)
    m = 0.5 * (p_ref + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p_ref > 0, p_ref * np.log2(p_ref / m), 0.0)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0)
    out: Array = np.maximum(0.5 * (kl_p + kl_q).sum(axis=-1), 0.0)
    return out


def mean_shift(ref_mean: Array | float, ref_std: Array | float, win_mean: Array | float) -> Array:
    """|window mean - reference mean| / reference std."""
    return np.asarray(np.abs(np.asarray(win_mean) - ref_mean) / ref_std, np.float64)


def drop(ref_mean: Array | float, ref_std: Array | float, win_mean: Array | float) -> Array:
    """(reference mean - window mean) / reference std: one-sided, positive when the window is lower."""
    return np.asarray((ref_mean - np.asarray(win_mean)) / ref_std, np.float64)


def linf(priors: Array, mix: Array) -> Array:
    """max |mix - priors| over the last axis (labels, aligned; a label the reference lacks has prior 0)."""
    out: Array = np.abs(mix - priors).max(axis=-1)
    return out


def exceeds(value: float, threshold: float) -> bool:
    """value > threshold, with a relative tolerance of 1e-9 (interpolated thresholds of equal values)."""
    return value > threshold + 1e-9 * max(abs(threshold), 1e-12)

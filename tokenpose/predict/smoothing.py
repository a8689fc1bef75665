"""The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) on each track's keypoints.

A first-order low-pass filter whose cutoff rises with the signal's speed: at rest it smooths hard
(cutoff `min_cutoff` Hz, little jitter), moving it follows closely (cutoff min_cutoff + beta * |speed|,
little lag). With sample period T and cutoff fc, one step is x_hat = x_hat + alpha * (x - x_hat) with
alpha = 1 / (1 + tau / T), tau = 1 / (2 pi fc); the speed is the same filter (cutoff `d_cutoff`) on
the finite difference. Two consequences the tests check, from these parameters alone:

* white jitter of standard deviation s on a still point comes out as s * sqrt(alpha / (2 - alpha))
  with alpha from min_cutoff (an exponential moving average);
* a point moving at constant speed v is followed with a steady lag of v * T * (1 - alpha) / alpha
  at most (the lag of min_cutoff; beta only raises the cutoff, so shortens it).
"""

from __future__ import annotations

import math

import numpy as np


def smoothing_factor(period: float, cutoff: float) -> float:
    """alpha of one low-pass step of `period` seconds at `cutoff` Hz."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / period)


class OneEuroFilter:
    """One-Euro filter over arrays of any fixed shape (e.g. (J, 2) keypoints); element-wise.

    min_cutoff: Hz at rest; beta: cutoff increase per unit of speed (units per second); d_cutoff:
    Hz of the speed estimate. `__call__(x, t)` takes the sample at time t (seconds, increasing) and
    returns the filtered value; the first sample passes unchanged.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"One-Euro filter needs min_cutoff > 0, d_cutoff > 0, beta >= 0; got "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None
        self.time = 0.0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.value is None or t <= self.time:
            self.value, self.speed, self.time = x.copy(), np.zeros_like(x), t
            return x.copy()
        period = t - self.time
        a_d = smoothing_factor(period, self.d_cutoff)
        self.speed = self.speed + a_d * ((x - self.value) / period - self.speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self.speed)
        tau = 1.0 / (2.0 * np.pi * cutoff)
        alpha = 1.0 / (1.0 + tau / period)
        self.value = self.value + alpha * (x - self.value)
        self.time = t
        return self.value.copy()


class TrackSmoother:
    """A One-Euro filter per track id on its (J, 2) keypoints; a track unseen for `forget_after`
    seconds starts afresh (its filter would otherwise drag the keypoints from where it was lost).
    Keypoints of a joint that is not finite pass unfiltered."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0,
                 forget_after: float = 1.0) -> None:
        self.options = (min_cutoff, beta, d_cutoff)
        OneEuroFilter(*self.options)  # bad parameters fail here, not at the first person
        self.forget_after = forget_after
        self.filters: dict[int, OneEuroFilter] = {}

    def __call__(self, ids: np.ndarray, keypoints: np.ndarray, t: float) -> np.ndarray:
        """ids (N,) (-1: untracked, left as is), keypoints (N, J, 2) pixels at time t s -> smoothed copy."""
        out = np.array(keypoints, dtype=np.float64, copy=True)
        for stale in [k for k, f in self.filters.items() if t - f.time > self.forget_after]:
            del self.filters[stale]
        for n, track in enumerate(np.asarray(ids).tolist()):
            if track < 0 or not np.isfinite(out[n]).all():
                continue
            flt = self.filters.setdefault(track, OneEuroFilter(*self.options))
            out[n] = flt(out[n], t)
        return out

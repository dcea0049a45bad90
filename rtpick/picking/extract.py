"""Streaming pick extraction: SeisBench ``classify`` on a stream of final samples.

SeisBench turns each annotation trace into picks with ObsPy's ``trigger_onset``
(on at ``>= threshold``, off below ``threshold / 2``) and takes the first maximum
inside each trigger as the pick. :class:`TriggerPicker` runs the same state
machine over stacked samples as they become final, so each pick is emitted once,
when its trigger closes (or when its block of data ends), and never again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

# state vector layout
_ACTIVE, _S0, _S1, _PEAK_I, _PEAK_V, _SUM_P, _SUM_PI, _SUM_PI2 = range(8)


@numba.njit(cache=True, nogil=True)
def _scan(values, base, thr_on, thr_off, state, out):  # pragma: no cover - numba
    """Advance the trigger state over ``values`` (absolute index of values[0] = base).

    Writes closed triggers into ``out`` rows (s0, s1, peak_i, peak_v, sum_p,
    sum_pi, sum_pi2) and returns how many were closed.
    """
    n_out = 0
    for k in range(values.shape[0]):
        v = values[k]
        i = base + k
        if state[_ACTIVE] != 0.0:
            if v >= thr_off:  # NaN compares False: a blinded sample ends a trigger
                state[_S1] = i
                if v > state[_PEAK_V]:
                    state[_PEAK_V] = v
                    state[_PEAK_I] = i
                d = i - state[_S0]
                state[_SUM_P] += v
                state[_SUM_PI] += v * d
                state[_SUM_PI2] += v * d * d
                continue
            for j in range(7):
                out[n_out, j] = state[1 + j]
            n_out += 1
            state[_ACTIVE] = 0.0
        if v >= thr_on:
            state[_ACTIVE] = 1.0
            state[_S0] = i
            state[_S1] = i
            state[_PEAK_I] = i
            state[_PEAK_V] = v
            state[_SUM_P] = v
            state[_SUM_PI] = 0.0
            state[_SUM_PI2] = 0.0
    return n_out


@dataclass(slots=True)
class Trigger:
    """A closed trigger in absolute sample indices, with its peak and spread."""

    start: int
    end: int
    peak: int
    peak_value: float
    spread_samples: float  # probability-weighted standard deviation of the sample index


class TriggerPicker:
    """Trigger state for one phase of one station."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.state = np.zeros(8, dtype=np.float64)

    @property
    def open_since(self) -> int | None:
        """Start index of the trigger still on, None when off (where a resumed scan must restart)."""
        return int(self.state[_S0]) if self.state[_ACTIVE] != 0.0 else None

    def scan(self, values: np.ndarray, base: int) -> list[Trigger]:
        """Consume final samples ``values`` (absolute index of the first: ``base``)."""
        if len(values) == 0:
            return []
        out = np.empty((len(values) // 2 + 2, 7), dtype=np.float64)
        n = _scan(values, base, self.threshold, self.threshold / 2, self.state, out)
        return [self._trigger(out[k]) for k in range(n)]

    def close(self) -> list[Trigger]:
        """End of a block: a trigger still on ends at the last sample (as ``trigger_onset``)."""
        if self.state[_ACTIVE] == 0.0:
            return []
        self.state[_ACTIVE] = 0.0
        return [self._trigger(self.state[1:8].copy())]

    @staticmethod
    def _trigger(row: np.ndarray) -> Trigger:
        s0, s1, peak_i, peak_v, sum_p, sum_pi, sum_pi2 = row
        mean = sum_pi / sum_p if sum_p > 0 else 0.0
        var = max(sum_pi2 / sum_p - mean * mean, 0.0) if sum_p > 0 else 0.0
        return Trigger(int(s0), int(s1), int(peak_i), float(peak_v), float(np.sqrt(var)))

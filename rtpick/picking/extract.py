"""Streaming pick extraction: SeisBench ``classify`` on a stream of final samples.

SeisBench turns each annotation trace into picks with ObsPy's ``trigger_onset``
(on at ``>= threshold``, off below ``threshold / 2``) and takes the first maximum
inside each trigger as the pick. :class:`TriggerPicker` runs the same state
machine over stacked samples as they become final, so each pick is emitted once,
when its trigger closes (or when its block of data ends), and never again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numba
import numpy as np

# state vector layout (the threshold rides along, so a station's pickers are one array for numba)
_ACTIVE, _S0, _S1, _PEAK_I, _PEAK_V, _SUM_P, _SUM_PI, _SUM_PI2, _THRESHOLD = range(9)
STATE_SIZE = 9


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


@numba.njit(cache=True, nogil=True)
def _scan_phases(values, base, rows, skips, states, out):  # pragma: no cover - numba
    """:func:`_scan` for several phases of one station in one call.

    Phase ``j`` scans ``values[rows[j], skips[j]:]`` with state ``states[j]``
    (threshold in the state: on at it, off below half of it); its closed triggers go
    to ``out`` rows as (j, s0, s1, peak_i, peak_v, sum_p, sum_pi, sum_pi2), phase
    by phase. Returns how many rows were written.
    """
    n_out = 0
    for j in range(rows.shape[0]):
        thr = states[j, _THRESHOLD]
        n = _scan(values[rows[j], skips[j]:], base + skips[j], thr, thr / 2, states[j], out[n_out:, 1:])
        out[n_out:n_out + n, 0] = j
        n_out += n
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
    """Trigger state for one phase of one station (``state``: its own array, or a row of :class:`PhasePickers`)."""

    def __init__(self, threshold: float, state: np.ndarray | None = None):
        self.state = np.zeros(STATE_SIZE, dtype=np.float64) if state is None else state
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        return float(self.state[_THRESHOLD])

    @threshold.setter
    def threshold(self, value: float) -> None:  # a reload changes it in place, the trigger state stays
        self.state[_THRESHOLD] = value

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
        s0, s1, peak_i, peak_v, sum_p, sum_pi, sum_pi2 = row.tolist()
        mean = sum_pi / sum_p if sum_p > 0 else 0.0
        var = max(sum_pi2 / sum_p - mean * mean, 0.0) if sum_p > 0 else 0.0
        return Trigger(int(s0), int(s1), int(peak_i), peak_v, math.sqrt(var))


class PhasePickers(Mapping[int, TriggerPicker]):
    """The pickers of one station, by class index, with their states in one array.

    A mapping like ``{class index: TriggerPicker}`` (each picker's state is a row of
    ``states``), plus :meth:`scan`, which advances all of them over a station's newly
    final samples in one numba call: the per-window picking of thousands of stations
    costs one call per station rather than one per phase.
    """

    def __init__(self, thresholds: Mapping[int, float]):
        self.classes = np.array(list(thresholds), dtype=np.int64)
        self.states = np.zeros((len(self.classes), STATE_SIZE), dtype=np.float64)
        self._pickers = {k: TriggerPicker(thr, self.states[j]) for j, (k, thr) in enumerate(thresholds.items())}
        self._no_skips = np.zeros(len(self.classes), dtype=np.int64)

    def __getitem__(self, cls: int) -> TriggerPicker:
        return self._pickers[cls]

    def __iter__(self) -> Iterator[int]:
        return iter(self._pickers)

    def __len__(self) -> int:
        return len(self._pickers)

    def reset(self) -> None:
        """No trigger on, none in progress (a station restart); thresholds stay."""
        self.states[:, :_THRESHOLD] = 0.0

    def scan(self, values: np.ndarray, base: int, skips: Mapping[int, int] | None = None) -> list[tuple[int, Trigger]]:
        """Consume final samples ``values`` (classes × samples; absolute index of the first: ``base``), all phases.

        ``skips``: per class, leading samples not to scan (a resumed block whose phase
        was picked further than the others). Returns (class index, trigger) of the
        closed triggers, phase by phase in class order.
        """
        n = values.shape[1]
        if n == 0 or not len(self.classes):
            return []
        skip = self._no_skips if skips is None else np.array([min(max(0, skips.get(int(k), 0)), n) for k in self.classes], dtype=np.int64)
        out = np.empty((len(self.classes) * (n // 2 + 2), 8), dtype=np.float64)
        m = _scan_phases(values, base, self.classes, skip, self.states, out)
        classes = self.classes
        return [(int(classes[int(out[r, 0])]), TriggerPicker._trigger(out[r, 1:])) for r in range(m)]

"""Streaming pick extraction: SeisBench ``classify`` on a stream of final samples.

SeisBench turns each annotation trace into picks with ObsPy's ``trigger_onset``
(on at ``>= threshold``, off below ``threshold / 2``) and takes the first maximum
inside each trigger as the pick. :class:`TriggerPicker` runs the same state
machine over stacked samples as they become final, so each pick is emitted once,
when its trigger closes (or when its block of data ends), and never again.

:meth:`PhasePickers.take_scan` reads a station's newly final stacked values out of its
ring sums (:func:`rtpick.stream.dsp.take_stacked`) and scans them in the same numba
call: the lane does this once per touched station after every batch, and each call
from Python into numba costs about 2 µs, more than the work itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numba
import numpy as np

from rtpick.stream.dsp import take_classes

# state vector layout (the threshold rides along, so a station's pickers are one array for numba)
_ACTIVE, _S0, _S1, _PEAK_I, _PEAK_V, _SUM_P, _SUM_PI, _SUM_PI2, _THRESHOLD = range(9)
STATE_SIZE = 9
_OUT_COLUMNS = 8  # a closed trigger's row from _scan_phases: phase row, then the 7 values _scan writes


@numba.njit(cache=True, nogil=True, inline="always")
def _next_on(values, k, thr_on):  # pragma: no cover - numba
    """Index of the first of ``values[k:]`` at or above ``thr_on`` (NaN never is); ``len(values)`` if none.

    Tests blocks of 16 samples without a branch per sample (it counts the samples at
    or above), then searches the block with one sample by sample: about 3
    instructions per sample of a quiet trace, against about 10 for the trigger state
    machine testing every sample. Unsigned and iterator indexing: no negative-index
    wraparound code per sample.
    """
    n = values.shape[0]
    while k + 16 <= n:
        hit = 0
        for j in range(16):
            hit += values[np.uint64(k + j)] >= thr_on
        if hit:
            break
        k += 16
    for v in values[k:]:
        if v >= thr_on:
            return k
        k += 1
    return k


@numba.njit(cache=True, nogil=True)
def _scan(values, base, thr_on, thr_off, state, out):  # pragma: no cover - numba
    """Advance the trigger state over ``values`` (absolute index of values[0] = base).

    Writes closed triggers into ``out`` rows (s0, s1, peak_i, peak_v, sum_p,
    sum_pi, sum_pi2) and returns how many were closed. While no trigger is on
    (nearly all samples) :func:`_next_on` skips ahead to the next sample that turns
    one on; the sample that closes a trigger is looked at again with it off, as it
    may turn the next one on.
    """
    n_out = 0
    n = values.shape[0]
    k = 0
    while k < n:
        if state[_ACTIVE] == 0.0:
            k = _next_on(values, k, thr_on)
            if k == n:
                break
            v = values[k]
            i = base + k
            state[_ACTIVE] = 1.0
            state[_S0] = i
            state[_S1] = i
            state[_PEAK_I] = i
            state[_PEAK_V] = v
            state[_SUM_P] = v
            state[_SUM_PI] = 0.0
            state[_SUM_PI2] = 0.0
            k += 1
            continue
        v = values[k]
        i = base + k
        if v >= thr_off:  # NaN compares False: a blinded sample ends a trigger
            state[_S1] = i
            if v > state[_PEAK_V]:
                state[_PEAK_V] = v
                state[_PEAK_I] = i
            d = i - state[_S0]
            state[_SUM_P] += v
            state[_SUM_PI] += v * d
            state[_SUM_PI2] += v * d * d
            k += 1
            continue
        for j in range(7):
            out[n_out, j] = state[1 + j]
        n_out += 1
        state[_ACTIVE] = 0.0
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


@numba.njit(cache=True, nogil=True)
def _take_scan_phases(acc, cnt, start, stop, use_max, keep, flat, rows, skips, states, out):  # pragma: no cover - numba
    """:func:`~rtpick.stream.dsp.take_stacked` then :func:`_scan_phases` over the values taken, in one call.

    The values of ``[start, stop)`` go to the first ``classes * (stop - start)``
    elements of the 1-D ``flat``, as a C-ordered (classes, stop - start) array (a
    reused buffer longer than needed keeps that layout, so the loops still
    vectorise); only the classes scanned (``rows``) are computed, unless ``keep``
    (the values are handed to the ``on_stacked`` tap), the others are only cleared.
    Returns how many trigger rows were written to ``out``.
    """
    values = flat[:acc.shape[0] * (stop - start)].reshape((acc.shape[0], stop - start))
    wanted = np.full(acc.shape[0], keep)
    for k in rows:
        wanted[k] = True
    take_classes(acc, cnt, start, stop, use_max, values, wanted)
    return _scan_phases(values, start, rows, skips, states, out)


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


class ScanScratch:
    """Buffers :meth:`PhasePickers.take_scan` writes into and reuses from call to call (grown as needed).

    One per lane: a lane picks its stations one after another, and each call's
    triggers are read out of the buffers before it returns, so nothing refers to
    them between calls; a fresh array per call cost an allocation each time.
    """

    __slots__ = ("values", "triggers")

    def __init__(self) -> None:
        self.values = np.empty(0, dtype=np.float64)  # flat: classes x samples, C order
        self.triggers = np.empty((0, _OUT_COLUMNS), dtype=np.float64)


class PhasePickers(Mapping[int, TriggerPicker]):
    """The pickers of one station, by class index, with their states in one array.

    A mapping like ``{class index: TriggerPicker}`` (each picker's state is a row of
    ``states``), plus :meth:`take_scan`, which reads a station's newly final samples
    out of its stacking sums and advances all of them over those samples in one numba
    call: the per-window picking of thousands of stations costs one call per station
    rather than two plus one per phase.
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

    def take_scan(self, acc: np.ndarray, cnt: np.ndarray, start: int, stop: int, use_max: bool, scratch: ScanScratch,
                  skips: Mapping[int, int] | None = None, keep: bool = False) -> tuple[np.ndarray | None, list[tuple[int, Trigger]]]:
        """Take the final stacked values ``[start, stop)`` out of ring sums ``acc``/``cnt`` and advance every phase's picker over them, in one numba call.

        ``acc``/``cnt`` are the station's (classes, capacity) sums; the range is read
        and cleared as by :func:`~rtpick.stream.dsp.take_stacked` and must not be
        empty. The values go to ``scratch`` (reused, see :class:`ScanScratch`); with
        ``keep`` to an array of their own instead, returned as (classes, stop - start)
        for the caller to keep (the ``on_stacked`` tap); otherwise None is returned in
        its place. ``skips``: per class, leading samples not to scan (a resumed block
        whose phase was picked further than the others). Returns (values or None,
        (class index, trigger) of the closed triggers, phase by phase in class order).
        """
        n = stop - start
        size = acc.shape[0] * n
        rows = len(self.classes) * (n // 2 + 2)  # at most one trigger closed per two samples, plus slack
        if keep:
            flat = np.empty(size, dtype=np.float64)
        else:
            flat = scratch.values
            if flat.shape[0] < size:
                flat = scratch.values = np.empty(size, dtype=np.float64)
        out = scratch.triggers
        if out.shape[0] < rows:
            out = scratch.triggers = np.empty((rows, _OUT_COLUMNS), dtype=np.float64)
        m = _take_scan_phases(acc, cnt, start, stop, use_max, keep, flat, self.classes, self._skip_array(skips, n), self.states, out)
        triggers = [(int(self.classes[int(out[r, 0])]), TriggerPicker._trigger(out[r, 1:])) for r in range(m)]
        return (flat.reshape(acc.shape[0], n) if keep else None), triggers

    def _skip_array(self, skips: Mapping[int, int] | None, n: int) -> np.ndarray:
        """Per picker row, leading samples not to scan, clipped to [0, n] (see :meth:`take_scan`)."""
        if skips is None:
            return self._no_skips
        return np.array([min(max(0, skips.get(int(k), 0)), n) for k in self.classes], dtype=np.int64)

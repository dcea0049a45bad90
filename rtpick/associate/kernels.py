"""Numba kernels of the associator: the origin-time stack and the location grid search."""

from __future__ import annotations

import numba
import numpy as np

from rtpick.associate.traveltime import tt_lookup


@numba.njit(cache=True)
def stack_update(stack, node_tt, node_tol, stations, phases, times, weights, sign, bin_s, base_bin, n_ring, lo_bin):
    """Add (sign=+1) or remove (-1) picks from the origin-time stack.

    ``stack[ring, node]``: each pick votes at every node for origin times
    ``t - tt ± tol`` (the node's travel-time spread to that station plus the model
    tolerance), binned at ``bin_s``; bins before ``lo_bin`` (expired) are skipped.
    ``times`` are seconds after ``base_bin * bin_s``.
    """
    n_nodes = stack.shape[1]
    for j in range(len(times)):
        s = stations[j]
        ph = phases[j]
        w = weights[j] * sign
        for n in range(n_nodes):
            t0 = times[j] - node_tt[n, s, ph]
            tol = node_tol[n, s, ph]
            if tol < 0:
                continue  # station beyond the voting distance of this node
            b0 = int(np.floor((t0 - tol) / bin_s)) + base_bin
            b1 = int(np.floor((t0 + tol) / bin_s)) + base_bin
            for b in range(max(b0, lo_bin), b1 + 1):
                stack[b % n_ring, n] += w


@numba.njit(cache=True)
def find_peak(stack, rejected, b_lo, b_hi, n_ring):
    """Largest stack value in absolute bins [b_lo, b_hi] not already rejected at that value."""
    best = 0.0
    best_b = -1
    best_n = -1
    n_nodes = stack.shape[1]
    for b in range(b_lo, b_hi + 1):
        r = b % n_ring
        for n in range(n_nodes):
            v = stack[r, n]
            if v > best and v > rejected[r, n] + 1e-3:
                best = v
                best_b = b
                best_n = n
    return best, best_b, best_n


@numba.njit(cache=True)
def reject_region(stack, rejected, b, node, neighbours, n_ring):
    """Remember the current values around a failed candidate so it is retried only after it grows."""
    for db in range(-2, 3):
        r = (b + db) % n_ring
        for k in range(neighbours.shape[1]):
            n = neighbours[node, k]
            if n >= 0:
                rejected[r, n] = max(rejected[r, n], stack[r, n])


@numba.njit(cache=True)
def _geodesic_km(lat1, lon1, lat2, lon2):
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(min(max(a, 0.0), 1.0)))


@numba.njit(cache=True)
def score_trials(trial_lat, trial_lon, trial_dep, pick_sta, pick_ph, pick_t, pick_w, group,
                 sta_lat, sta_lon, sta_corr, times, dz, dx, tol_base, tol_frac, out_t0, out_score, out_n):
    """For each trial hypocentre: robust origin time (densest residual cluster) and score.

    Picks must be sorted by ``group`` (one group per station and phase). The score is
    the sum over groups of the best ``w * (1 - (r/tol)^2)`` in the group, so a second
    event's pick at the same station never adds to the score.
    """
    n = len(pick_t)
    r = np.empty(n)
    tol = np.empty(n)
    for i in range(len(trial_lat)):
        for j in range(n):
            s = pick_sta[j]
            d = _geodesic_km(trial_lat[i], trial_lon[i], sta_lat[s], sta_lon[s])
            tt = tt_lookup(times, dz, dx, pick_ph[j], d, trial_dep[i]) + sta_corr[s, pick_ph[j]]
            r[j] = pick_t[j] - tt
            tol[j] = max(tol_base, tol_frac * tt)
        order = np.argsort(r)
        best = -1.0
        t0 = r[order[0]] if n else 0.0
        hi = 0
        acc = 0.0
        for lo in range(n):
            while hi < n and r[order[hi]] - r[order[lo]] <= 2 * tol_base:
                acc += pick_w[order[hi]]
                hi += 1
            if acc > best:
                best = acc
                sw = 0.0
                st = 0.0
                for k in range(lo, hi):
                    sw += pick_w[order[k]]
                    st += pick_w[order[k]] * r[order[k]]
                t0 = st / sw
            acc -= pick_w[order[lo]]
        # two weighted-mean iterations with the phase-dependent tolerance
        for _ in range(2):
            sw = 0.0
            st = 0.0
            for j in range(n):
                if abs(r[j] - t0) < tol[j]:
                    k = 1.0 - ((r[j] - t0) / tol[j]) ** 2
                    sw += pick_w[j] * k
                    st += pick_w[j] * k * r[j]
            if sw > 0:
                t0 = st / sw
        score = 0.0
        g_best = 0.0
        n_groups = 0
        for j in range(n):
            if j > 0 and group[j] != group[j - 1]:
                score += g_best
                if g_best > 0:
                    n_groups += 1
                g_best = 0.0
            e = (r[j] - t0) / tol[j]
            if abs(e) < 1.0:
                v = pick_w[j] * (1.0 - e * e)
                if v > g_best:
                    g_best = v
        score += g_best
        if g_best > 0:
            n_groups += 1
        out_t0[i] = t0
        out_score[i] = score
        out_n[i] = n_groups


@numba.njit(cache=True)
def collect_peaks(stack, rejected, b_lo, b_hi, n_ring, threshold, margin, out_v, out_b, out_n):
    """Cells in bins [b_lo, b_hi] at or above their node's ``threshold`` that are maxima along time at
    their node and exceed their remembered rejection value by ``margin``; returns the count
    (at most ``len(out_v)``, the largest values are not guaranteed when the buffer fills)."""
    n_nodes = stack.shape[1]
    k = 0
    cap = len(out_v)
    for b in range(b_lo, b_hi + 1):
        r = b % n_ring
        rp = (b - 1) % n_ring
        rn = (b + 1) % n_ring
        for n in range(n_nodes):
            v = stack[r, n]
            if v < threshold[n] or v <= rejected[r, n] + margin:
                continue
            if v < stack[rp, n] or v < stack[rn, n]:
                continue
            if k < cap:
                out_v[k] = v
                out_b[k] = b
                out_n[k] = n
                k += 1
    return k

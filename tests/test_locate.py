"""Locator: robust damped least squares on the 1D tables, uncertainties, outlier rejection."""

from __future__ import annotations

import numpy as np
import pytest

from rtpick.associate.locate import Locator, LocatorSettings
from rtpick.associate.stations import distance_km
from rtpick.publish.messages import event_message, validate_message
from rtpick.types import NS_PER_S, Event, Pick


def _arrivals(stations, table, lat, lon, depth, t0=100.0, max_km=60.0, min_km=0.0, noise=0.0, seed=0):
    """(station rows, phases, times) of P and S at every station within [min_km, max_km]."""
    d = distance_km(lat, lon, stations.latitude, stations.longitude)
    rows = np.flatnonzero((d < max_km) & (d >= min_km))
    sta = np.r_[rows, rows]
    ph = np.r_[np.zeros(len(rows), int), np.ones(len(rows), int)]
    tt = np.where(ph == 0, table(0, d[sta], depth, stations.elevation_m[sta]), table(1, d[sta], depth, stations.elevation_m[sta]))
    rng = np.random.default_rng(seed)
    return sta, ph, t0 + tt + rng.normal(0.0, noise, len(tt)) * np.where(ph == 0, 1.0, 2.0)


def test_a_pick_3_s_off_is_rejected_and_the_location_stays_within_1_km(stations, table):
    lat, lon, depth = 35.75, -97.05, 6.0
    sta, ph, t = _arrivals(stations, table, lat, lon, depth, noise=0.05)
    t[4] += 3.0
    loc = Locator(stations, table).locate(sta, ph, t, np.full(len(t), 0.05), np.full(len(t), 0.8),
                                          (lat + 0.03, lon - 0.03, 12.0, 101.0))  # a grid solution ~4 km off
    assert list(np.flatnonzero(~loc.used)) == [4]
    assert loc.residuals_s[4] == pytest.approx(3.0, abs=0.3)
    assert distance_km(loc.latitude, loc.longitude, lat, lon) < 1.0
    assert abs(loc.depth_km - depth) < 2.0 and abs(loc.origin_s - 100.0) < 0.1
    assert loc.n_p + loc.n_s == len(t) - 1
    assert loc.rms_s < 0.2


def test_clean_picks_give_the_true_hypocentre_and_a_small_ellipse(stations, table):
    lat, lon, depth = 35.9, -96.9, 9.0
    sta, ph, t = _arrivals(stations, table, lat, lon, depth)
    loc = Locator(stations, table).locate(sta, ph, t, np.full(len(t), 0.05), np.ones(len(t)), (lat, lon - 0.05, 3.0, 99.0))
    assert distance_km(loc.latitude, loc.longitude, lat, lon) < 0.3
    assert abs(loc.depth_km - depth) < 0.5 and abs(loc.origin_s - 100.0) < 0.05
    assert loc.used.all() and loc.n_p == loc.n_s == len(t) // 2
    assert 0 < loc.semi_minor_km <= loc.semi_major_km < 1.0 and 0 <= loc.azimuth_deg < 180
    assert loc.gap_deg < 120 and loc.nearest_km == pytest.approx(
        distance_km(lat, lon, stations.latitude, stations.longitude).min(), abs=0.5)


def test_without_near_stations_depth_falls_back_to_the_prior_with_a_large_uncertainty(stations, table):
    lat, lon = 35.8, -97.0
    sta, ph, t = _arrivals(stations, table, lat, lon, 8.0, min_km=35.0, max_km=80.0, noise=0.1)
    near = _arrivals(stations, table, lat, lon, 8.0, max_km=80.0, noise=0.1)
    settings = LocatorSettings(depth_prior_km=8.0, depth_prior_sigma_km=5.0)
    far = Locator(stations, table, settings).locate(sta, ph, t, 0.1 + 0.1 * ph, np.ones(len(t)), (lat, lon, 3.0, 100.0))
    good = Locator(stations, table, settings).locate(*near, 0.1 + 0.1 * near[1], np.ones(len(near[2])), (lat, lon, 3.0, 100.0))
    assert far.depth_uncertainty_km > 2.0 * good.depth_uncertainty_km
    assert abs(far.depth_km - 8.0) < 2.5 * far.depth_uncertainty_km  # honest: the error is within its stated size
    assert abs(good.depth_km - 8.0) < 1.0


def test_an_event_outside_the_network_has_a_large_gap(stations, table):
    lat, lon = 35.8 + 0.9, -97.0  # ~100 km north of the centre, 25 km beyond the northernmost stations
    sta, ph, t = _arrivals(stations, table, lat, lon, 5.0, max_km=110.0)
    loc = Locator(stations, table).locate(sta, ph, t, np.full(len(t), 0.05), np.ones(len(t)), (lat - 0.1, lon, 5.0, 100.0))
    assert loc.gap_deg > 180 and loc.nearest_km > 20.0
    assert loc.semi_major_km > loc.semi_minor_km


def test_too_few_picks_give_no_location(stations, table):
    assert Locator(stations, table).locate([0, 1, 0], [0, 0, 1], [1.0, 2.0, 3.0], [0.1] * 3, [1.0] * 3, (35.8, -97.0, 5, 0)) is None


def test_located_event_message_is_schema_valid(stations, table):
    sta, ph, t = _arrivals(stations, table, 35.8, -97.0, 5.0)
    loc = Locator(stations, table).locate(sta, ph, t, np.full(len(t), 0.05), np.ones(len(t)), (35.8, -97.0, 5.0, 100.0))
    ns = 1_700_000_000 * NS_PER_S
    pick = Pick("OK.X1..HHZ", "P", ns, 0.9, 0.05, ns, ns, "test")
    bad = Pick("OK.X2..HHZ", "S", ns + NS_PER_S, 0.5, 0.05, ns, ns, "test")
    event = Event("rtp1", 0, ns, 35.8, -97.0, loc.depth_km, loc.semi_major_km, loc.depth_uncertainty_km,
                  loc.time_uncertainty_s, picks=[(pick, 0.01)],
                  extra={"location": loc.message_fields(), "rejected_picks": [(bad, 3.02)]})
    doc = event_message(event)
    validate_message(doc)
    assert doc["error_ellipse"]["confidence"] == 0.68 and doc["locator"] == "rtpick.geiger"
    assert doc["rejected_picks"][0]["residual_s"] == 3.02 and doc["rejected_picks"][0]["phase"] == "S"

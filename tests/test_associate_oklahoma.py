"""Acceptance: the daemon's picks on the bundled Oklahoma 2013 data make exactly one event.

PyOcto, given SeisBench's picks, puts it near 35.48 N, 97.11 W, origin 15:38:50.3.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtpick.associate import build_associator
from rtpick.associate.stations import distance_km
from rtpick.config import AssociateConfig, Config
from rtpick.publish.messages import event_message, validate_message
from rtpick.types import iso_to_ns


@pytest.fixture(scope="module")
def daemon_picks(oklahoma_dir, phasenet):  # noqa: ARG001 - phasenet fixture checks the weights are there
    from rtpick.inference.models import load_model
    from rtpick.ingest.replay import ReplayIngest
    from rtpick.pipeline import Pipeline

    config = Config()
    pipeline = Pipeline(config, load_model(config.inference.model))
    picks = []
    for record in ReplayIngest([oklahoma_dir], speed=0.0).records():
        picks += pipeline.feed(record)
    picks += pipeline.flush()
    return picks


@pytest.mark.slow
def test_oklahoma_picks_make_exactly_one_event_inside_the_network(daemon_picks):
    assoc = build_associator(AssociateConfig())
    events = assoc.run(daemon_picks)
    final = {}
    for ev in events:
        final[ev.event_id] = ev
    assert len(final) == 1, [(e.event_id, e.latitude, e.longitude) for e in final.values()]
    ev = next(iter(final.values()))
    st = assoc.stations
    assert st.latitude.min() < ev.latitude < st.latitude.max()
    assert st.longitude.min() < ev.longitude < st.longitude.max()
    first_p = min(p.time_ns for p in daemon_picks if p.phase == "P" and p.time_ns > iso_to_ns("2013-06-16T15:38:30Z"))
    assert ev.origin_time_ns < first_p
    # close to PyOcto's solution from SeisBench's picks
    assert distance_km(ev.latitude, ev.longitude, 35.48, -97.11) < 10.0
    assert abs(ev.origin_time_ns - iso_to_ns("2013-06-16T15:38:50.3Z")) < 1.5e9
    assert ev.n_p >= 4 and ev.n_s >= 3 and ev.final
    assert np.abs([r for _, r in ev.picks]).max() < 1.0
    # located: uncertainties, fit and network geometry in the message, every revision schema-valid
    for revision in events:
        validate_message(event_message(revision))
    doc = event_message(ev)
    assert doc["locator"] == "rtpick.geiger"
    ellipse = doc["error_ellipse"]
    assert 0 < ellipse["semi_minor_km"] <= ellipse["semi_major_km"] == doc["horizontal_uncertainty_km"] < 10.0
    assert ellipse["confidence"] == 0.68 and 0 <= ellipse["azimuth_deg"] <= 180
    assert 0 < doc["depth_uncertainty_km"] < 15.0 and 0 < doc["time_uncertainty_s"] < 1.0
    assert 0 < doc["rms_residual_s"] < 0.5
    assert 0 < doc["azimuthal_gap_deg"] <= 360 and 0 < doc["nearest_station_km"] < 100.0

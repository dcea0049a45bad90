"""`rtpick dataset build` from a QuakeML catalogue + SDS archive written here with ObsPy, then adapt → region → replay.

The archive: 30 minutes of 6 Oklahoma stations (network OK, HH channels; LC30 at
200 Hz) holding 8 simulated induced events 200 s apart, picks in QuakeML. Broken
on purpose, each counted by cause in the build report:

- a pick on OK.ZZZ, a station the StationXML does not know    → unknown_station (1 pick)
- P and S on OK.W35A, in the inventory, with no data           → no_waveform (2)
- FNO's data has a 3 s gap across event 3's P                  → gap (P and S of that trace)
- SIO's archive ends before event 7's P                        → pick_outside_data (its P and S)
- X34A event 4 has a flat top at 2^23 - 1 counts               → clipped (its P and S)
- plus an amplitude pick (IAML), a rejected pick, and a second
  automatic P at OKCFA for event 5                             → unsupported_phase, rejected, duplicate (1 each)
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from obspy import Stream, Trace, UTCDateTime

from rtpick.cli import main

STATIONS = [("FNO", "01"), ("LC30", ""), ("OKCFA", ""), ("SIO", ""), ("U32A", ""), ("X34A", "")]
COORDS = {"FNO": (35.2572, -97.4007), "LC30": (35.6667, -97.1305), "OKCFA": (35.4153, -97.4153), "SIO": (35.7465, -96.3077),
          "U32A": (36.3795, -99.0013), "X34A": (34.601, -97.8327), "W35A": (35.1527, -96.8745)}
T0 = UTCDateTime("2013-06-17T01:00:00")
N_EVENTS, SPACING_S, LENGTH_S, FS = 8, 200, 1800, 100.0
GAP_EVENT, CLIP_EVENT, LAST_EVENT = 3, 4, N_EVENTS - 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _event_start(k: int) -> float:
    return 100.0 + k * SPACING_S


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """SDS tree + StationXML + QuakeML; returns paths and the expected label counts."""
    from obspy.core.event import Catalog, Event, Magnitude, Origin, Pick, ResourceIdentifier, WaveformStreamID
    from obspy.core.inventory import Channel, Inventory, Network, Station

    from rtpick.adapt.simulate import simulate, with_overrides

    root = tmp_path_factory.mktemp("archive")
    preset = with_overrides("induced", stations_per_event=(6, 6), events_per_swarm=(1, 1), noise_fraction=0.0, min_snr_db=None)
    sim = simulate(preset, 6 * N_EVENTS, seed=3)
    rng = np.random.default_rng(0)
    n = int(LENGTH_S * FS)
    sigma = float(np.median(sim.waveforms[:, 0, :400].std(axis=1)))
    data = {sta: rng.normal(0, sigma, size=(3, n)) for sta, _ in STATIONS}
    picks: dict[tuple[int, str], dict[str, UTCDateTime]] = {}
    for k, (event_id, rows) in enumerate(sim.metadata.groupby("source_id", sort=False)):
        for (sta, _), i in zip(STATIONS, rows.index):
            a = int(_event_start(k) * FS)
            data[sta][:, a : a + sim.waveforms.shape[-1]] = sim.waveforms[i]
            p, s = rows.loc[i, "trace_p_arrival_sample"], rows.loc[i, "trace_s_arrival_sample"]
            picks[(k, sta)] = {"P": T0 + _event_start(k) + p / FS, **({"S": T0 + _event_start(k) + s / FS} if np.isfinite(s) else {})}
    # defects
    p_fno = int((picks[(GAP_EVENT, "FNO")]["P"] - T0) * FS)
    p_x34 = int((picks[(CLIP_EVENT, "X34A")]["P"] - T0) * FS)
    data["X34A"][0, p_x34 + 50 : p_x34 + 60] = 2**23 - 1
    sio_end = int((_event_start(LAST_EVENT) + 2) * FS)

    sds = root / "sds"
    for sta, loc in STATIONS:
        for c, comp in enumerate("ZNE"):
            x = np.round(data[sta][c]).astype(np.int32)
            segments = [(0, n)]
            if sta == "FNO":
                segments = [(0, p_fno - 150), (p_fno + 150, n)]
            if sta == "SIO":
                segments = [(0, sio_end)]
            st = Stream()
            for a, b in segments:
                tr = Trace(x[a:b].copy(), header={"network": "OK", "station": sta, "location": loc, "channel": f"HH{comp}", "sampling_rate": FS, "starttime": T0 + a / FS})
                if sta == "LC30":
                    tr.data = tr.data.astype(np.float64)
                    tr.resample(200.0)
                    tr.data = np.round(tr.data).astype(np.int32)
                st += tr
            folder = sds / str(T0.year) / "OK" / sta / f"HH{comp}.D"
            folder.mkdir(parents=True, exist_ok=True)
            st.write(str(folder / f"OK.{sta}.{loc}.HH{comp}.D.{T0.year}.{T0.julday:03d}"), format="MSEED", encoding="INT32")

    inv_stations = []
    for sta, (lat, lon) in COORDS.items():
        loc = dict(STATIONS).get(sta, "")
        channels = [Channel(f"HH{c}", loc, lat, lon, 300.0, 0.0, azimuth=az, dip=dip, sample_rate=FS) for c, az, dip in (("Z", 0, -90), ("N", 0, 0), ("E", 90, 0))]
        inv_stations.append(Station(sta, lat, lon, 300.0, channels=channels))
    inventory = root / "stations.xml"
    Inventory([Network("OK", stations=inv_stations)], source="test").write(str(inventory), format="STATIONXML")

    catalog = Catalog()
    for k in range(N_EVENTS):
        origin_time = min(picks[(k, s)]["P"] for s, _ in STATIONS) - 1.0
        ev = Event(resource_id=ResourceIdentifier(f"smi:test/event/ev{k}"))
        ev.origins = [Origin(time=origin_time, latitude=35.5, longitude=-97.2, depth=4000.0)]
        ev.magnitudes = [Magnitude(mag=1.5 + 0.1 * k, magnitude_type="ML")]
        for sta, loc in STATIONS:
            for phase, t in picks[(k, sta)].items():
                ev.picks.append(Pick(time=t, phase_hint=phase, evaluation_mode="manual", waveform_id=WaveformStreamID("OK", sta, loc, "HHZ" if phase == "P" else "HHN")))
        catalog.append(ev)
    catalog[1].picks.append(Pick(time=picks[(1, "FNO")]["P"], phase_hint="P", evaluation_mode="manual", waveform_id=WaveformStreamID("OK", "ZZZ", "", "HHZ")))
    catalog[2].picks += [Pick(time=picks[(2, "FNO")][ph] + 1.0, phase_hint=ph, evaluation_mode="manual", waveform_id=WaveformStreamID("OK", "W35A", "", "HHZ")) for ph in ("P", "S")]
    catalog[5].picks.append(Pick(time=picks[(5, "OKCFA")]["P"] + 0.05, phase_hint="P", evaluation_mode="automatic", waveform_id=WaveformStreamID("OK", "OKCFA", "", "HHZ")))
    catalog[6].picks.append(Pick(time=picks[(6, "SIO")]["P"] + 3, phase_hint="IAML", evaluation_mode="manual", waveform_id=WaveformStreamID("OK", "SIO", "", "HHN")))
    catalog[6].picks.append(Pick(time=picks[(6, "U32A")]["P"] + 0.5, phase_hint="P", evaluation_status="rejected", waveform_id=WaveformStreamID("OK", "U32A", "", "HHZ")))
    quakeml = root / "events.xml"
    catalog.write(str(quakeml), format="QUAKEML")

    broken = {(GAP_EVENT, "FNO"): "gap", (CLIP_EVENT, "X34A"): "clipped", (LAST_EVENT, "SIO"): "pick_outside_data"}
    expected = {"P": 0, "S": 0, "traces": 0, "unusable": {"unknown_station": 1, "no_waveform": 2, "unsupported_phase": 1, "rejected": 1, "duplicate": 1}}
    for key, phases in picks.items():
        if key in broken:
            expected["unusable"][broken[key]] = expected["unusable"].get(broken[key], 0) + len(phases)
            continue
        expected["traces"] += 1
        for ph in phases:
            expected[ph] += 1
    return {"sds": sds, "inventory": inventory, "quakeml": quakeml, "expected": expected, "picks": picks}


@pytest.fixture(scope="module")
def built(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ok"
    rc = main(["dataset", "build", "--catalog", str(archive["quakeml"]), "--sds", str(archive["sds"]), "--inventory", str(archive["inventory"]),
               "--out", str(out), "--split", "0.5,0.25,0.25", "--seed", "1", "--noise-fraction", "0.1"])
    assert rc == 0
    return out


def test_build_counts_used_and_unusable_picks_by_cause(built, archive):
    report = json.loads((built / "build_report.json").read_text())
    exp = archive["expected"]
    assert report["picks"]["used"] == {"P": exp["P"], "S": exp["S"]}
    assert report["picks"]["unusable"] == exp["unusable"]
    assert report["traces"]["earthquake"] == exp["traces"] and report["events"] == N_EVENTS
    assert report["picks"]["read"] == exp["P"] + exp["S"] + sum(exp["unusable"].values())
    assert report["traces"]["noise"] >= 1
    assert set(report["resampled_from_hz"]) == {"200"} and report["resampled_from_hz"]["200"] >= N_EVENTS  # LC30, plus its noise traces
    assert "OK.ZZZ." in report["examples"]["unknown_station"][0]
    assert "OK.FNO.01.HH?" in report["stations"] and not any("W35A" in s for s in report["stations"])


def test_built_folder_is_a_seisbench_dataset_with_labels_at_the_picks(built, archive):
    import seisbench.data as sbd

    ds = sbd.WaveformDataset(built, component_order="ZNE")
    meta = ds.metadata
    quakes = meta[meta["trace_category"] == "earthquake"]
    assert len(quakes) == archive["expected"]["traces"]
    assert (meta["trace_sampling_rate_hz"] == 100.0).all() and ds.get_waveforms(0).shape == (3, 6000)
    assert (quakes.groupby("source_id")["split"].nunique() == 1).all() and set(meta["split"]) == {"train", "dev", "test"}
    assert quakes["source_magnitude"].between(1.5, 2.3).all() and quakes["path_ep_distance_km"].notna().all()
    # the label sits where the archive put the arrival: the trace starts 20 s before the first pick
    assert quakes["trace_p_arrival_sample"].between(1999, 2001).all()
    row = quakes[(quakes["station_code"] == "OKCFA")].iloc[0]
    k = int(row["source_id"].removeprefix("ev"))
    start = UTCDateTime(row["trace_start_time"])
    assert abs(start + row["trace_p_arrival_sample"] / 100.0 - archive["picks"][(k, "OKCFA")]["P"]) < 0.011
    assert quakes["trace_snr_db"].notna().all()


def test_build_refuses_a_missing_waveform_source(archive, tmp_path, capsys):
    rc = main(["dataset", "build", "--catalog", str(archive["quakeml"]), "--out", str(tmp_path / "x")])
    assert rc == 2 and "exactly one waveform source" in capsys.readouterr().err


@pytest.fixture(scope="module")
def adapted(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "ok-adapted"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["adapt", "--data", str(built), "--out", str(out), "--strategy", "frozen-encoder", "--epochs", "1",
                   "--examples-per-epoch", "16", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    return out, buf.getvalue()


def test_adapt_accepts_the_built_folder_and_prints_the_region_stanza(adapted, built):
    import tomllib

    out, printed = adapted
    meta = pd.read_csv(built / "metadata.csv")
    card = json.loads((out / "model_card.json").read_text())
    assert card["n_examples"] == int((meta["split"] == "train").sum())
    stanza = (out / "region.toml").read_text()
    assert stanza in printed
    region = tomllib.loads(stanza)["regions"][0]
    assert region["name"] == "ok-adapted" and region["model"] == f"file:{out.resolve()}"
    assert sorted(region["stations"]) == sorted(f"OK.{s}.{loc}.HH?" for s, loc in STATIONS)


def test_replay_with_the_printed_stanza_picks_oklahoma_with_the_adapted_model(adapted, oklahoma_dir, tmp_path):
    out, _ = adapted
    config = tmp_path / "rtpick.toml"
    config.write_text((out / "region.toml").read_text() + '\n[[regions]]\nname = "default"\nmodel = "seisbench:PhaseNet/original"\n')
    run = subprocess.run([sys.executable, "-m", "rtpick", "replay", str(oklahoma_dir), "--config", str(config), "--progress", "never"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    picks = [json.loads(line) for line in run.stdout.splitlines()]
    adapted_id = f"file:{out.resolve()}"
    event = (UTCDateTime("2013-06-16T15:38:50"), UTCDateTime("2013-06-16T15:39:30"))
    by_model = {}
    for p in picks:
        if p["phase"] == "P" and event[0] <= UTCDateTime(p["time"]) <= event[1]:
            by_model.setdefault(p["model_id"], set()).add(p["stream_id"].rsplit(".", 1)[0])
    # trained stations (HH family) are picked by the adapted model, the rest by the default
    assert {"OK.FNO.01", "OK.LC30.", "OK.OKCFA.", "OK.SIO.", "OK.X34A."} <= by_model.get(adapted_id, set())
    assert "OK.W35A." in by_model.get("seisbench:PhaseNet/original", set())
    assert all(p["region"] == "ok-adapted" for p in picks if p["model_id"] == adapted_id)


def test_evaluate_scores_a_model_on_the_catalogue_picks_directly(archive, tmp_path):
    rc = main(["evaluate", "--model", "california=seisbench:PhaseNet/original", "--catalog", str(archive["quakeml"]), "--sds", str(archive["sds"]),
               "--inventory", str(archive["inventory"]), "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    m = report["models"]["california"]
    assert m["n_traces"] == archive["expected"]["traces"] and report["split"] == "all"
    assert m["thresholds"] == {"P": 0.3, "S": 0.3}  # no dev split: the model's own thresholds
    assert m["P"]["0.5s"]["tp"] + m["P"]["0.5s"]["fn"] == archive["expected"]["P"]
    assert json.loads((tmp_path / "catalog_data" / "build_report.json").read_text())["picks"]["unusable"]["gap"] == 2


def test_pseudo_labels_on_the_bundled_oklahoma_data_keep_associated_confident_picks(oklahoma_dir, tmp_path):
    out = tmp_path / "pseudo"
    rc = main(["dataset", "build", "--pseudo-labels", "seisbench:PhaseNet/original", "--mseed", str(oklahoma_dir), "--inventory", str(oklahoma_dir / "stations.csv"),
               "--start", "2013-06-16T15:37:50", "--end", "2013-06-16T15:43:50", "--associate", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["events"] == 1 and report["picks"]["used"]["P"] >= 3
    assert set(report["picks"]["unusable"]) <= {"low_confidence", "not_associated", "gap", "uncertain_pick", "s_without_p"}
    meta = pd.read_csv(out / "metadata.csv")
    quakes = meta[meta["trace_category"] == "earthquake"]
    assert (quakes["trace_p_probability"] >= 0.5).all() and (quakes["trace_p_status"] == "automatic").all()
    assert quakes["source_latitude_deg"].between(34.5, 36.5).all()  # the associator's location of the 15:38:50 event


def test_pseudo_labels_on_simulated_traces_follow_the_teacher_and_drop_doubtful_ones(phasenet):
    from rtpick.adapt.pseudo import PseudoConfig, pseudo_label_traces
    from rtpick.adapt.simulate import simulate

    ts = simulate("induced", 60, seed=11)
    out, counts = pseudo_label_traces(phasenet, ts, PseudoConfig())
    assert counts["traces"] == len(ts) and counts["labelled"] + counts["noise"] + counts["dropped"] == len(ts)
    meta = out.metadata
    labelled = meta[meta["trace_category"] == "earthquake"]
    assert len(labelled) == counts["labelled"] > 0
    truth = ts.metadata.set_index("trace_name").loc[labelled["trace_name"], "trace_p_arrival_sample"].to_numpy()
    # confident teacher picks sit on the true onsets (the California model picks these well)
    assert np.median(np.abs(labelled["trace_p_arrival_sample"].to_numpy() - truth)) <= 10
    assert labelled.groupby("source_id").size().min() >= PseudoConfig().min_stations
    assert meta.loc[meta["trace_category"] == "noise", "trace_p_arrival_sample"].isna().all()


def test_manual_only_counts_automatic_picks_instead_of_using_them(archive, tmp_path):
    out = tmp_path / "manual"
    rc = main(["dataset", "build", "--catalog", str(archive["quakeml"]), "--sds", str(archive["sds"]), "--inventory", str(archive["inventory"]),
               "--out", str(out), "--split", "0.5,0.25,0.25", "--manual-only", "--noise-fraction", "0"])
    assert rc == 0
    unusable = json.loads((out / "build_report.json").read_text())["picks"]["unusable"]
    assert unusable["automatic"] == 1 and "duplicate" not in unusable  # the automatic second P at OKCFA, event 5


def test_clipping_and_phase_names():
    from rtpick.adapt.build import BuildConfig, _clipped
    from rtpick.adapt.catalog import normalise_phase

    cfg = BuildConfig()
    flat = np.zeros(500)
    flat[100:106] = 2**23 - 1
    assert "flat top" in _clipped(flat, cfg)
    assert _clipped(np.sin(np.arange(500) / 3.0) * 5e6, cfg) == ""
    assert _clipped(np.r_[np.zeros(10), [3, 3, 3, 3, 3, 3]], cfg) == ""  # quiet integer data is not clipping
    assert "clip level" in _clipped(np.r_[np.zeros(10), [9e6]], BuildConfig(clip_counts=8e6))
    assert [normalise_phase(p) for p in ("Pg", "pn", "S", "Sb", "IAML", "Lg", None)] == ["P", "P", "S", "S", None, None, None]

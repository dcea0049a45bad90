"""Hot swap of a region's model (issue 10, acceptance 4): exactly once, identity per pick, refusals keep the old model.

In process: a pipeline fed part of the Oklahoma data, a reload (``SystemdHook.on_reload``
with a fake daemon that runs the pipeline calls inline), the rest of the data. The
windows computed (station, start) are recorded at the one place windows leave the
rings (``InferenceEngine.gather``) and compared with a run without a swap. End to end:
``rtpick run`` against the SeedLink replay server, SIGHUP with a bad model then a good one.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import obspy
import pytest
import torch

from rtpick.config import load_config
from rtpick.inference.engine import InferenceEngine
from rtpick.pipeline import Pipeline
from rtpick.publish.metrics import Metrics
from rtpick.service.systemd import Notifier, SystemdHook
from tests.conftest import OKLAHOMA, REPO
from tests.oracle import shuffled_records

STATIONS = ("FNO.HH", "OKCFA.HH", "SIO.HH")
ORIGINAL = "seisbench:PhaseNet/original"


@pytest.fixture(scope="module")
def models(tmp_path_factory, phasenet) -> dict[str, str]:
    """Model specs: a perturbed copy of PhaseNet (same shape, other weights) and four that must be refused."""
    import seisbench.models as sbm

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    perturbed = sbm.PhaseNet.from_pretrained("original")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in perturbed.out.parameters():  # the output layer only: other weights, still a picker
            param.mul_(1 + 0.05 * torch.randn(param.shape, generator=gen))
    perturbed.save(str(root / "perturbed"))
    (root / "corrupt.json").write_text((root / "perturbed.json").read_text())
    (root / "corrupt.pt").write_bytes((root / "perturbed.pt").read_bytes()[:5000])  # truncated copy
    sbm.PhaseNet(sampling_rate=50).save(str(root / "pn50"))
    sbm.PhaseNet(component_order="ENZ").save(str(root / "enz"))
    return {
        "perturbed": f"file:{root / 'perturbed'}",
        "corrupt": f"file:{root / 'corrupt'}",
        "wrong_architecture": f"file:EQTransformer:{root / 'perturbed'}",
        "rate_50hz": f"file:{root / 'pn50'}",
        "components_enz": f"file:{root / 'enz'}",
    }


@pytest.fixture(scope="module")
def records():
    stream = obspy.Stream()
    for family in STATIONS:
        station, band = family.split(".")
        stream += obspy.read(str(OKLAHOMA / f"{station}.{band}?.*"))
    return shuffled_records(stream, np.random.default_rng(10))


def write_config(path: Path, model: str, extra: str = "") -> None:
    path.write_text(f'[inference]\nthreads = 1\nbatch_size = 16\nmodel = "{model}"\n[stream]\ncomponent_wait_s = 60.0\n{extra}')


class InlineDaemon:
    """What on_reload needs of the daemon; pipeline calls run when the test says (between batches)."""

    def __init__(self, config, pipeline):
        self.config, self.pipeline, self.calls = config, pipeline, []

    def call_in_pipeline(self, fn):
        self.calls.append(fn)

    def run_calls(self):
        calls, self.calls = self.calls, []
        for fn in calls:
            fn(self.pipeline)


@pytest.fixture
def gathered(monkeypatch):
    """(ring, window start, model) of every window copied out of a ring, in order.

    The ring is ``("slot", n)`` for a station's slot of the lane's ring pool (live
    batches), else the id of the array (the reload's dry-run batch).
    """
    seen: list[tuple[object, int, object]] = []
    original, original_batch = InferenceEngine.gather, InferenceEngine.gather_batch

    def gather(self, data, starts, out):
        seen.extend((id(data), int(s), self.model) for s in starts)
        return original(self, data, starts, out)

    def gather_batch(self, data, slots, starts, rows, out):
        seen.extend((("slot", int(slot)), int(s), self.model) for slot, s in zip(slots, starts))
        return original_batch(self, data, slots, starts, rows, out)

    monkeypatch.setattr(InferenceEngine, "gather", gather)
    monkeypatch.setattr(InferenceEngine, "gather_batch", gather_batch)
    return seen


def ring_keys(pipe: Pipeline) -> dict:
    """Ring (as recorded by ``gathered``) -> station key."""
    return {("slot", station.slot): key for key, station in pipe.stations.items()}


def windows_by_station(pipe: Pipeline, seen, dry_runs: int = 0) -> Counter:
    """Windows per (station, start); the rows gathered from other arrays are the reload's dry-run batches."""
    keys = ring_keys(pipe)
    assert sum(1 for buf, _, _ in seen if buf not in keys) == dry_runs * pipe.config.inference.batch_size
    return Counter((keys[buf], start) for buf, start, _ in seen if buf in keys)


def reference_windows(config_path: Path, records, seen) -> Counter:
    """The windows a run without any reload computes (the same data, the same lane shape)."""
    pipe = Pipeline(load_config(config_path))
    for record in records:
        pipe.feed(record)
    pipe.flush()
    counts = windows_by_station(pipe, seen)
    seen.clear()
    return counts


def reload_hook(config_path: Path, metrics: Metrics) -> SystemdHook:
    return SystemdHook(SimpleNamespace(metrics=metrics), str(config_path), notifier=Notifier(""))


def running_original(tmp_path: Path, records, gathered):
    """A pipeline on the original model with its reload hook; the windows a run without a swap computes."""
    config_path = tmp_path / "rtpick.toml"
    write_config(config_path, ORIGINAL)
    reference = reference_windows(config_path, records, gathered)
    config = load_config(config_path)
    pipe = Pipeline(config)
    daemon, metrics = InlineDaemon(config, pipe), Metrics(process=False)
    return config_path, reference, pipe, daemon, metrics, reload_hook(config_path, metrics)


def failures(metrics: Metrics, region: str = "default") -> float:
    return metrics.registry.get_sample_value("rtpick_model_reload_failures_total", {"region": region}) or 0.0


def test_swap_mid_replay_computes_every_window_once_and_picks_carry_the_model(tmp_path, models, records, gathered, caplog):
    config_path, reference, pipe, daemon, metrics, hook = running_original(tmp_path, records, gathered)
    old = pipe.lanes["default"].loaded
    metrics.set_model(old.model_id, old.version, old.sha256)
    before, half = [], 0
    while half < len(records) // 2 or not pipe.lanes["default"].queue:  # switch mid-replay with windows queued
        before += pipe.feed(records[half])
        half += 1

    write_config(config_path, models["perturbed"])
    with caplog.at_level(logging.INFO, logger="rtpick.service.systemd"):
        hook.on_reload(daemon)  # loads and verifies now (main thread) ...
        assert pipe.lanes["default"].loaded is old
        queued = [(w.group.key, w.start) for w in pipe.lanes["default"].queue]
        daemon.run_calls()  # ... switches when the pipeline thread runs it (between batches)
    new = pipe.lanes["default"].loaded
    assert new.model_id == models["perturbed"] and new.sha256 != old.sha256
    assert "model swapped" in caplog.text and "region 'default'" in caplog.text
    assert queued, "the switch should find windows queued (they must go to the new model)"
    after = [p for record in records[half:] for p in pipe.feed(record)] + pipe.flush()

    counts = windows_by_station(pipe, gathered, dry_runs=1)
    assert max(counts.values()) == 1, f"windows computed twice: {[k for k, n in counts.items() if n > 1][:5]}"
    assert counts == reference, "the swapped run must compute exactly the windows of a run without a swap"
    assert pipe.stats.windows == sum(reference.values()) and pipe.stats.windows_failed == pipe.stats.windows_dropped == 0
    keys = ring_keys(pipe)
    by_model = {(keys[buf], start): model for buf, start, model in gathered if buf in keys}
    assert all(by_model[w] is new.model for w in queued), "windows queued at the switch are computed by the new model"
    assert before and after
    assert {(p.model_id, p.extra.get("model_sha256")) for p in before} == {(old.model_id, old.sha256)}
    assert {(p.model_id, p.extra.get("model_sha256")) for p in after} == {(new.model_id, new.sha256)}
    assert metrics.registry.get_sample_value("rtpick_model_info", {"region": "default", "model": new.model_id, "version": new.version, "sha256": new.sha256}) == 1
    assert metrics.registry.get_sample_value("rtpick_model_info", {"region": "default", "model": old.model_id, "version": old.version, "sha256": old.sha256}) is None


BAD = {
    "corrupt": "cannot load",
    "wrong_architecture": "as EQTransformer",
    "rate_50hz": "needs a restart",
    "components_enz": "needs a restart",
}


def test_bad_models_are_refused_and_the_old_model_keeps_picking(tmp_path, models, records, gathered, caplog):
    config_path, reference, pipe, daemon, metrics, hook = running_original(tmp_path, records, gathered)
    old = pipe.lanes["default"].loaded
    half = len(records) // 2
    picks = [p for record in records[:half] for p in pipe.feed(record)]
    for n, (name, reason) in enumerate(BAD.items(), start=1):
        write_config(config_path, models[name])
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="rtpick.service.systemd"):
            hook.on_reload(daemon)
            daemon.run_calls()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "region 'default'" in errors[0] and reason in errors[0], (name, errors)
        assert pipe.lanes["default"].loaded is old, name
        assert failures(metrics) == n
    picks += [p for record in records[half:] for p in pipe.feed(record)] + pipe.flush()
    assert windows_by_station(pipe, gathered) == reference
    assert picks and {p.model_id for p in picks} == {old.model_id}


def test_reload_keeps_model_thresholds_unless_the_file_sets_them(tmp_path, models, records):
    """The known bug: a reload applied picking.thresholds' 0.3 defaults over the model's default_args."""
    import seisbench.models as sbm

    adapted = sbm.PhaseNet.from_pretrained("original")
    adapted.default_args = {**adapted.default_args, "P_threshold": 0.55, "S_threshold": 0.42}
    adapted.save(str(tmp_path / "adapted"))
    config_path = tmp_path / "rtpick.toml"
    write_config(config_path, f"file:{tmp_path / 'adapted'}")
    config = load_config(config_path)
    pipe = Pipeline(config)
    for record in records[:2000]:
        pipe.feed(record)
    daemon = InlineDaemon(config, pipe)
    hook = reload_hook(config_path, Metrics(process=False))
    lane = pipe.lanes["default"]
    assert lane.thresholds == {"P": 0.55, "S": 0.42}
    hook.on_reload(daemon)  # file unchanged: nothing to apply
    daemon.run_calls()
    assert lane.thresholds == {"P": 0.55, "S": 0.42} and lane.loaded.model is not None
    write_config(config_path, f"file:{tmp_path / 'adapted'}", "[picking]\nthresholds = { S = 0.6 }\n")
    model = lane.loaded
    hook.on_reload(daemon)
    daemon.run_calls()
    assert lane.loaded is model, "a threshold change keeps the running model"
    assert lane.thresholds == {"P": 0.55, "S": 0.6}
    s_index = lane.labels.index("S")
    assert all(station.pickers[s_index].threshold == 0.6 for station in lane.stations.values())


def test_models_reload_signals_an_rtpick_process_only(tmp_path, models):
    """`rtpick models reload --pid`: SIGHUP to an rtpick process; not to another process, nor with a bad --config."""
    marker = tmp_path / "hup"
    script = tmp_path / "rtpick_standin.py"  # 'rtpick' in its command line, as `rtpick run` has
    script.write_text(
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(marker)!r}).write_text('hup'))\n"
        "print('ready', flush=True)\n"
        "for _ in range(600):\n    time.sleep(0.05)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    standin = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert standin.stdout.readline().strip() == "ready"
        cli = [sys.executable, "-m", "rtpick", "models", "reload"]
        refused = subprocess.run([*cli, "--pid", str(other.pid)], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert refused.returncode == 2 and "is not rtpick" in refused.stderr and other.poll() is None
        hint = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert hint.returncode == 2 and "systemctl reload rtpick" in hint.stderr
        write_config(tmp_path / "bad.toml", models["corrupt"])
        bad = subprocess.run([*cli, "--pid", str(standin.pid), "--config", str(tmp_path / "bad.toml")], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert bad.returncode == 2 and "not signalled" in bad.stderr and "region 'default'" in bad.stderr and not marker.exists()
        (tmp_path / "pid").write_text(f"{standin.pid}\n")
        sent = subprocess.run([*cli, "--pid-file", str(tmp_path / "pid")], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "hup"
    finally:
        for proc in (other, standin):
            proc.kill()
            proc.wait()
        standin.stdout.close()


class Lines:
    """A subprocess pipe read line by line on a thread (the daemon never blocks on a full pipe)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.lines: list[str] = []
        self._new: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line)
            self._new.put(line)

    def close(self) -> None:
        """After the process ended: the rest of its output, then the pipe closed."""
        self._thread.join(timeout=10)
        self.pipe.close()

    def wait_for(self, predicate, timeout: float, proc) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=0.2)
            except queue.Empty:
                assert proc.poll() is None, f"rtpick run exited with {proc.returncode}"
                continue
            if predicate(line):
                return line
        raise AssertionError(f"timed out after {timeout} s; last lines: {self.lines[-20:]}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_run_over_seedlink_hot_swaps_on_sighup(tmp_path, models):
    """`rtpick run` against the replay server: SIGHUP with a corrupt model (refused, named, publishing goes on),
    then with a new model (swapped; the picks of the events, all after the switch, carry its model_id)."""
    from rtpick.seedlink_server.archive import Archive
    from rtpick.seedlink_server.server import ServerThread

    config_path = tmp_path / "rtpick.toml"
    logging_section = '[logging]\nlevel = "INFO"\n'
    write_config(config_path, ORIGINAL, logging_section)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STATE_DIRECTORY", None)
    with ServerThread(Archive([OKLAHOMA]), port=0, speed=2.0) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtpick", "run", "--config", str(config_path), "--seedlink", f"127.0.0.1:{server.port}",
             "--streams", "OK_*", "--state-file", str(tmp_path / "run.state"), "--begin-time", "2013-06-16T15:37:00Z", "--stdout"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.wait_for(lambda line: "ready (sd_notify" in line, 120, proc)
            write_config(config_path, models["corrupt"], logging_section)
            proc.send_signal(signal.SIGHUP)
            refused = err.wait_for(lambda line: " ERROR " in line, 60, proc)
            assert "region 'default'" in refused and "cannot load" in refused
            write_config(config_path, models["perturbed"], logging_section)
            proc.send_signal(signal.SIGHUP)
            swapped = err.wait_for(lambda line: "model swapped" in line, 60, proc)
            assert "region 'default'" in swapped and models["perturbed"] in swapped
            out.wait_for(lambda line: json.loads(line).get("model_id") == models["perturbed"], 180, proc)
            deadline = time.monotonic() + 60  # the rest of the swarm's picks (bounded)
            while sum(models["perturbed"] in line for line in out.lines) < 5 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                out.close()
                err.close()
    assert proc.returncode == 0, "".join(err.lines[-30:])
    picks = [json.loads(line) for line in out.lines if line.startswith("{")]
    start_s = obspy.UTCDateTime("2013-06-16T15:37:50").timestamp
    events = [p for p in picks if obspy.UTCDateTime(p["time"]).timestamp - start_s > 60]  # all computed after the switch
    assert len(events) >= 5 and {p["model_id"] for p in events} == {models["perturbed"]}
    assert sum(" ERROR " in line for line in err.lines) == 1, "only the corrupt model is an error"


def test_one_region_refused_the_other_swaps(tmp_path, models, caplog):
    """Refusals are per region: a corrupt file for one region does not hold back another region's swap."""
    def write(model_a: str, model_default: str) -> None:
        config_path.write_text(
            f'[inference]\nthreads = 1\nmodel = "{model_default}"\n'
            f'[[regions]]\nname = "fno"\nstations = ["OK.FNO.*.*"]\nmodel = "{model_a}"\n'
            '[[regions]]\nname = "default"\n'
        )

    config_path = tmp_path / "rtpick.toml"
    write(ORIGINAL, ORIGINAL)
    config = load_config(config_path)
    pipe = Pipeline(config)
    old = pipe.lanes["default"].loaded
    daemon, metrics = InlineDaemon(config, pipe), Metrics(process=False)
    write(models["perturbed"], models["corrupt"])
    with caplog.at_level(logging.INFO, logger="rtpick.service.systemd"):
        reload_hook(config_path, metrics).on_reload(daemon)
        daemon.run_calls()
    assert pipe.lanes["fno"].loaded.model_id == models["perturbed"] and pipe.lanes["default"].loaded is old
    assert failures(metrics, "default") == 1 and failures(metrics, "fno") == 0
    assert "region 'fno': model swapped" in caplog.text and "region 'default' keeps its running model" in caplog.text

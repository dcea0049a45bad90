"""Throughput of the whole streaming pipeline vs SeisBench annotate vs the raw model forward.

Prints (never asserts) station-seconds of data processed per wall second for:

* ``rtpick``   — records → buffers → numba preprocessing → batched model → stacking → picks
* ``annotate`` — SeisBench ``PhaseNet.annotate`` on the same data, same overlap, threads, batch size
* ``forward``  — the raw model forward on pre-made tensors at the engine's batch size: the ceiling

Each of these per inference backend (``--backend``, see rtpick.inference.backends;
``annotate`` is SeisBench's own eager torch and is run once per repeat), on
``--device``; ``rtpick`` also per ``--forward-worker`` setting (the forward on its own
thread, gathering the next batch meanwhile; 'auto' = on for CUDA). Then the pipeline alone: microseconds per record with the model
stubbed out (the forward returns zeros), which is what the streaming spine costs
on top of the model: from a fresh pipeline (station creation and the first touch of
every ring page included) and in steady state (after as much data again was
streamed untimed, as in a daemon that has been running).

``--shards K`` adds rtpick as K instances on the same device (sharded deployment,
``rtpick@NAME``): K processes, each streaming its own 1/K of the stations through its
own pipeline and model; its throughput is all stations' data over the wall time from
a common start to the last instance's end. One Python process runs the spine on one
core, so this is how a machine with many cores and one GPU is used.

Contenders are interleaved and repeated; medians with min/max are reported.
Peak RSS is measured in a child process per station count (``--rss-stations``),
with data streamed in so that only the configured buffer seconds are held.

    python bench/throughput.py                      # defaults: 20 stations x 600 s, strides 10 and 15 s
    python bench/throughput.py --stations 50 --seconds 300 --repeats 5
    python bench/throughput.py --backend eager onnxruntime bf16 --strides 10 --rss-stations
    python bench/throughput.py --device cuda --stations 500 --seconds 300 --batch 1024 --backend eager --forward-worker on off
    python bench/throughput.py --device cuda --stations 500 --seconds 300 --batch 1024 --backend eager --shards 1 4 8
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if "SEISBENCH_CACHE_ROOT" not in os.environ:
    _cache = Path(tempfile.mkdtemp(prefix="rtpick-bench-cache-"))
    shutil.copytree(REPO.parent / "shared" / "seisbench-cache", _cache, dirs_exist_ok=True)
    os.environ["SEISBENCH_CACHE_ROOT"] = str(_cache)

import numpy as np  # noqa: E402
import obspy  # noqa: E402
import torch  # noqa: E402

from rtpick.config import Config  # noqa: E402
from rtpick.inference.models import load_model  # noqa: E402
from rtpick.ingest.replay import records_from_arrays  # noqa: E402
from rtpick.pipeline import FEED_CHUNK, Pipeline  # noqa: E402
from rtpick.types import NS_PER_S  # noqa: E402

T0_NS = 1_700_000_000 * NS_PER_S


def synthetic_channels(stations: int, seconds: int, seed: int = 0):
    """(stream id, int32 counts) of noise with a few wavelets, 100 Hz, three components per station."""
    rng = np.random.default_rng(seed)
    n = seconds * 100
    t = np.arange(n) / 100.0
    for s in range(stations):
        for comp in "ZNE":
            x = rng.normal(0.0, 200.0, n)
            for arrival in rng.uniform(10, seconds - 10, size=max(1, seconds // 120)):
                tau = t - arrival
                x += 4000.0 * np.exp(-((tau / 0.5) ** 2)) * np.sin(2 * np.pi * 6 * tau)
            yield f"XX.S{s:04d}..HH{comp}", x.astype(np.int32)


def make_records(stations: int, seconds: int, record_samples: int = 412):
    """Records in arrival order (by end time) across all channels."""
    recs = []
    for sid, data in synthetic_channels(stations, seconds):
        recs.extend(records_from_arrays(sid, T0_NS, 100.0, data, record_samples))
    recs.sort(key=lambda r: (r.end_ns, r.stream_id))
    return recs


def make_stream(stations: int, seconds: int) -> obspy.Stream:
    stream = obspy.Stream()
    for sid, data in synthetic_channels(stations, seconds):
        net, sta, loc, cha = sid.split(".")
        stream += obspy.Trace(data, header={"network": net, "station": sta, "location": loc, "channel": cha, "sampling_rate": 100.0, "starttime": obspy.UTCDateTime(T0_NS / NS_PER_S)})
    return stream


def bench_config(stride_s: float, threads: int, batch: int, backend: str = "eager", device: str = "cpu", forward_worker: str = "auto") -> Config:
    cfg = Config()
    cfg.inference.overlap_s = (3001 - round(stride_s * 100)) / 100  # PhaseNet: 3001-sample windows
    cfg.inference.threads = threads
    cfg.inference.batch_size = batch
    cfg.inference.backend = backend
    cfg.inference.device = device
    cfg.inference.forward_worker = forward_worker  # type: ignore[assignment]
    return cfg


def build_pipeline(cfg: Config, loaded, stub: bool = False) -> Pipeline:
    """The pipeline and its backend, built before any clock starts; ``stub``: the forward returns zeros."""
    pipe = Pipeline(cfg, loaded)
    if stub:
        for lane in pipe.lanes.values():  # laid out as PhaseNet's annotate_batch_post returns them: a transposed view
            zeros = np.zeros((lane.batch_size, len(lane.labels), lane.in_samples), dtype=np.float32)
            lane.engine.predict = lambda batch, z=zeros: z[: len(batch)].transpose(0, 2, 1)
    return pipe


def feed_all(pipe: Pipeline, records, chunk: int = FEED_CHUNK) -> None:
    """Feed ``records`` as the daemon does with a backlog queued (``FEED_CHUNK`` records per ``feed_many``), then flush."""
    for i in range(0, len(records), chunk):
        pipe.feed_many(records[i:i + chunk])
    pipe.flush()


def run_rtpick(cfg: Config, loaded, records, stub: bool = False) -> tuple[float, int]:
    """Seconds to feed and flush ``records`` (the pipeline and its backend are built before the clock starts)."""
    pipe = build_pipeline(cfg, loaded, stub)
    t0 = time.perf_counter()
    feed_all(pipe, records)
    return time.perf_counter() - t0, pipe.stats.windows


def run_stub_steady(cfg: Config, loaded, records, seconds: int) -> float:
    """Microseconds per record of the stubbed pipeline in steady state: the first ``seconds`` of ``records``
    are streamed untimed (stations created, rings and stacking sums touched, as in a daemon that has run
    for a while), the rest is timed, flush included."""
    pipe = build_pipeline(cfg, loaded, stub=True)
    warm = [r for r in records if r.end_ns <= T0_NS + seconds * NS_PER_S]
    rest = records[len(warm):]
    for rec in warm:
        pipe.feed(rec)
    t0 = time.perf_counter()
    feed_all(pipe, rest)
    return (time.perf_counter() - t0) / len(rest) * 1e6


def shard_of(stream_id: str, shards: int) -> int:
    """The instance a synthetic station (``XX.S0042..HHZ``) belongs to: station number modulo ``shards``."""
    return int(stream_id.split(".")[1][1:]) % shards


def shard_main(conn, index: int, shards: int, stations: int, seconds: int, device: str, threads: int) -> None:
    """One instance of the sharded contender (a child process): its stations' records, its own model and pipelines.

    Protocol on ``conn``: sends "ready" once warmed up; then per run receives a
    ``bench_config`` argument tuple, builds the pipeline, sends "built", waits for
    "go", feeds and flushes, and sends (monotonic start, monotonic end, windows);
    None ends it.
    """
    torch.set_num_threads(threads)
    loaded = load_model("seisbench:PhaseNet/original", device)
    records = [r for r in make_records(stations, seconds) if shard_of(r.stream_id, shards) == index]
    run_rtpick(bench_config(10.0, threads, 64, device=device), loaded, records[: len(records) // 10])  # numba warm-up
    conn.send("ready")
    while (args := conn.recv()) is not None:
        pipe = build_pipeline(bench_config(*args), loaded)
        conn.send("built")
        conn.recv()  # go
        t0 = time.monotonic()
        feed_all(pipe, records)
        conn.send((t0, time.monotonic(), pipe.stats.windows))


class Shards:
    """K instances of rtpick (child processes) run from a common start: see ``shard_main``."""

    def __init__(self, shards: int, stations: int, seconds: int, device: str, threads: int):
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self.conns, self.procs = [], []
        for index in range(shards):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=shard_main, args=(child, index, shards, stations, seconds, device, threads), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("a shard failed to start")

    def run(self, *config_args) -> tuple[float, int]:
        """Wall seconds from the common start to the last instance's end, and the windows of all instances."""
        for conn in self.conns:
            conn.send(config_args)
        for conn in self.conns:
            conn.recv()  # built
        for conn in self.conns:
            conn.send("go")
        results = [conn.recv() for conn in self.conns]
        return max(end for _, end, _ in results) - min(start for start, _, _ in results), sum(w for _, _, w in results)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def run_annotate(model, stream: obspy.Stream, overlap: int, batch: int) -> float:
    t0 = time.perf_counter()
    model.annotate(stream, overlap=overlap, batch_size=batch)
    return time.perf_counter() - t0


def run_forward(forward, in_samples: int, windows: int, batch: int, device: str) -> float:
    """The raw forward (a backend's, on pre-made normalised tensors) for ``windows`` windows."""
    x = torch.randn(batch, 3, in_samples, device=device)
    with torch.inference_mode():
        forward(x)  # warm-up
        t0 = time.perf_counter()
        done = 0
        while done < windows:
            forward(x[: min(batch, windows - done)])
            done += batch
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def rtpick_key(backend: str, worker: str, workers: list[str], shards: int = 1) -> str:
    """The rtpick contender's row name; the forward worker setting only when several are compared."""
    return f"rtpick {backend}" + (f" worker {worker}" if len(workers) > 1 else "") + (f" x{shards} instances" if shards > 1 else "")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):9.0f}  (min {min(values):.0f}, max {max(values):.0f})"


def rss_child(stations: int, seconds: int, buffer_seconds: float) -> None:
    """Child mode: stream data in chunks (never all in memory) and print peak RSS in MiB."""
    loaded = load_model("seisbench:PhaseNet/original")
    cfg = bench_config(10.0, 2, 64)
    cfg.stream.buffer_seconds = buffer_seconds
    pipe = Pipeline(cfg, loaded)
    rng = np.random.default_rng(1)
    chunk_s = 10
    for c in range(seconds // chunk_s):
        start = T0_NS + c * chunk_s * NS_PER_S
        for s in range(stations):
            for comp in "ZNE":
                data = rng.normal(0, 200.0, chunk_s * 100).astype(np.int32)
                for rec in records_from_arrays(f"XX.S{s:04d}..HH{comp}", start, 100.0, data, 412):
                    pipe.feed(rec)
    pipe.flush()
    # VmHWM belongs to this process image; ru_maxrss would inherit the parent's peak across spawn
    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(hwm_kib / 1024.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--strides", type=float, nargs="*", default=[10.0, 15.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rss-stations", type=int, nargs="*", default=[100, 500])
    ap.add_argument("--rss-seconds", type=int, default=240)
    ap.add_argument("--buffer-seconds", type=float, default=120.0)
    ap.add_argument("--backend", nargs="+", default=["eager", "onnxruntime", "bf16"], choices=["eager", "onnxruntime", "openvino", "bf16"],
                    help="inference backends to compare (each verified at load; a refused one runs eager and says so)")
    ap.add_argument("--device", default="cpu", help="torch device of rtpick, annotate and the raw forward")
    ap.add_argument("--forward-worker", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                    help="inference.forward_worker settings of rtpick to compare (interleaved)")
    ap.add_argument("--shards", type=int, nargs="+", default=[1],
                    help="rtpick as this many instances on the device, each with its share of the stations (1 = one pipeline in this process)")
    ap.add_argument("--stub-stations", type=int, default=50, help="stations of the stubbed-model run (0 = skip it)")
    ap.add_argument("--rss-child", nargs=3, type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        torch.set_num_threads(2)
        rss_child(int(args.rss_child[0]), int(args.rss_child[1]), args.rss_child[2])
        return

    torch.set_num_threads(args.threads)
    loaded = load_model("seisbench:PhaseNet/original", args.device)
    model = loaded.model
    station_seconds = args.stations * args.seconds
    print(f"# rtpick throughput: {args.stations} stations x {args.seconds} s at 100 Hz, 3 components, window 30 s, "
          f"batch {args.batch}, threads {args.threads}, device {args.device}, forward worker {' / '.join(args.forward_worker)}, "
          f"{args.repeats} interleaved repeats")
    records = make_records(args.stations, args.seconds)
    stream = make_stream(args.stations, args.seconds)
    forwards = {}
    for name in args.backend:  # build (export, verify) each backend once, outside the clock
        engine = Pipeline(bench_config(10.0, args.threads, args.batch, name, args.device), loaded).lanes["default"].engine
        forwards[name] = engine.backend.forward
        print(f"# backend {name}: {'refused, runs as ' + engine.backend.name if engine.backend.name != name else 'reference' if name == 'eager' else 'verified against eager'}")
    run_rtpick(bench_config(10.0, args.threads, args.batch, device=args.device), loaded, records[: len(records) // 10])  # numba warm-up
    shard_threads = {k: max(1, args.threads // k) for k in args.shards}
    instances = {k: Shards(k, args.stations, args.seconds, args.device, shard_threads[k]) for k in args.shards if k > 1}
    for k, threads in shard_threads.items():
        if k > 1:
            print(f"# {k} instances: {threads} torch thread(s) each, stations split by number modulo {k}")
    contenders = [(name, worker, k) for name in args.backend for worker in args.forward_worker for k in args.shards]
    try:
        for stride in args.strides:
            overlap = model.in_samples - int(round(stride * 100))
            results: dict[str, list[float]] = {"annotate": []}
            windows = 0
            for repeat in range(args.repeats):
                results["annotate"].append(station_seconds / run_annotate(model, stream.copy(), overlap, args.batch))
                for name, worker, k in contenders[:: 1 if repeat % 2 == 0 else -1]:  # alternate the order: the first run after another contender is slower
                    if k == 1:
                        seconds, windows = run_rtpick(bench_config(stride, args.threads, args.batch, name, args.device, worker), loaded, records)
                    else:
                        seconds, windows = instances[k].run(stride, shard_threads[k], args.batch, name, args.device, worker)
                    results.setdefault(rtpick_key(name, worker, args.forward_worker, k), []).append(station_seconds / seconds)
                for name in args.backend:
                    fwd = run_forward(forwards[name], model.in_samples, windows, args.batch, args.device)
                    results.setdefault(f"forward {name}", []).append(station_seconds / fwd)
            annotate = statistics.median(results["annotate"])
            print(f"\nstride {stride:.0f} s ({windows} windows per run)        station-seconds/s                x annotate")
            print(f"  {'annotate (eager)':30s} {summary(results['annotate'])}   1.00")
            for name in args.backend:
                keys = [rtpick_key(name, worker, args.forward_worker, k) for worker in args.forward_worker for k in args.shards]
                for key in [f"forward {name}"] + keys:
                    print(f"  {key:30s} {summary(results[key])}   {statistics.median(results[key]) / annotate:4.2f}")
                for key in keys:
                    share = statistics.median(results[key]) / statistics.median(results[f"forward {name}"])
                    print(f"  {'':30s} {key} = {100 * share:.0f} % of its raw forward")
    finally:
        for shards in instances.values():
            shards.close()
    if args.stub_stations:
        stub_records = make_records(args.stub_stations, args.seconds)
        steady_records = make_records(args.stub_stations, 2 * args.seconds)
        cfg = bench_config(10.0, args.threads, args.batch, device=args.device)
        fresh, steady = [], []
        for _ in range(args.repeats):  # interleaved
            fresh.append(run_rtpick(cfg, loaded, stub_records, stub=True)[0] / len(stub_records) * 1e6)
            steady.append(run_stub_steady(cfg, loaded, steady_records, args.seconds))
        print(f"\npipeline with the model stubbed, {args.stub_stations} stations x {args.seconds} s, records of 412 samples, us per record:")
        print(f"  from a fresh pipeline ({len(stub_records)} records): {statistics.median(fresh):.1f} (min {min(fresh):.1f}, max {max(fresh):.1f})")
        print(f"  steady state (the next {args.seconds} s, after the first were streamed untimed): "
              f"{statistics.median(steady):.1f} (min {min(steady):.1f}, max {max(steady):.1f})")
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for n in args.rss_stations:
        for seconds in (args.rss_seconds // 2, args.rss_seconds):
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), str(seconds), str(args.buffer_seconds)],
                                 capture_output=True, text=True, check=True, env=os.environ.copy())
            print(f"peak RSS, {n} stations x {seconds} s streamed, buffer {args.buffer_seconds:.0f} s: "
                  f"{float(out.stdout.strip().splitlines()[-1]):.0f} MiB")


if __name__ == "__main__":
    main()

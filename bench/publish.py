"""Publisher throughput: does a subscriber that never reads slow rtpick down?

Prints numbers, asserts nothing. Two parts, each with its baseline in the same run:

1. Publisher stress: N pick messages sent as fast as possible with (a) no
   subscriber, (b) a subscriber that reads, (c) a subscriber that never reads
   (tiny receive buffers), alternated over several rounds; median messages/s,
   99th-percentile and worst send time, drops counted by the publisher, and how
   many messages the subscriber really lost (the stalled one drains its queue at
   the end). The publisher counts the *onset* of each stall (libzmq then skips the
   stalled subscriber silently); subscribers see every loss as a jump in ``seq``.
2. Pipeline: the bundled Oklahoma archive replayed as fast as possible through
   the real Pipeline + Outputs (PhaseNet, 1 torch thread), without a subscriber
   and with a never-reading one; wall time per run.

    .venv/bin/python bench/publish.py [--messages 50000] [--rounds 3] [--no-pipeline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtpick.publish.zmq import Publisher  # noqa: E402
from rtpick.types import NS_PER_S, Pick  # noqa: E402


def sample_pick(i: int) -> Pick:
    t = 1371397135_000_000_000 + i * 10_000_000
    return Pick(f"OK.S{i % 200:03d}..HHZ", "P" if i % 2 else "S", t, 0.9, 0.05, t - 10**7, t + 10**7,
                "seisbench:PhaseNet/original", "1", (t - 20 * NS_PER_S, t + 10 * NS_PER_S))


def stalled_subscriber(context: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def join(pub: Publisher, sock: zmq.Socket | None) -> None:
    if sock is None:
        return
    for _ in range(200):  # until the subscription reached the publisher
        pub._socket.send_multipart([b"status", b"{}"])
        if sock.poll(10):
            while sock.poll(50):
                sock.recv_multipart()
            return
    raise RuntimeError("subscriber did not join")


READER = r"""
import sys, zmq
ctx = zmq.Context(); sock = ctx.socket(zmq.SUB)
sock.setsockopt(zmq.RCVHWM, 0); sock.setsockopt(zmq.SUBSCRIBE, b""); sock.connect(sys.argv[1])
n = 0; joined = False
while True:
    topic, payload = sock.recv_multipart()
    if topic == b"probe":
        if not joined:
            joined = True; print("joined", flush=True)
        continue
    if topic == b"end":
        break
    n += 1
print(n, flush=True); sock.close(); ctx.term()
"""


def stress_round(mode: str, n: int, sndhwm: int) -> dict:
    """One run; the reading subscriber is another process (no GIL shared with the publisher)."""
    import subprocess

    context = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=sndhwm, linger_s=1, registry=CollectorRegistry()).start()
    sock, reader = None, None
    if mode == "stalled":
        sock = stalled_subscriber(context, pub.endpoint)
        join(pub, sock)
    elif mode == "reading":
        reader = subprocess.Popen([sys.executable, "-c", READER, pub.endpoint], stdout=subprocess.PIPE, text=True)
        probe = threading.Thread(target=lambda: reader.stdout.readline())
        probe.start()
        while probe.is_alive():
            pub._socket.send_multipart([b"probe", b"{}"])
            probe.join(0.01)
    picks = [sample_pick(i) for i in range(1000)]
    durations = []
    t_start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter_ns()
        pub.publish_pick(picks[i % 1000])
        durations.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - t_start
    lost = None
    if reader is not None:
        pub._socket.send_multipart([b"end", b"{}"])
        lost = n - int(reader.stdout.readline())
        reader.wait(30)
        reader.stdout.close()
    if sock is not None:  # what the stalled subscriber got once it finally reads: its real loss
        got = 0
        while sock.poll(300):
            got += sock.recv_multipart()[0].startswith(b"pick.")
        lost = n - got
    dropped = pub.dropped["pick"]
    pub.close()
    if sock is not None:
        sock.close(linger=0)
    context.term()
    durations.sort()
    return {"rate": n / elapsed, "p99_us": durations[int(0.99 * n)] / 1000, "max_us": durations[-1] / 1000, "dropped": dropped, "lost": lost}


def stress(n: int, rounds: int, sndhwm: int) -> None:
    print(f"## Publisher stress: {n} pick messages per run, sndhwm={sndhwm}, {rounds} rounds (median; worst of max)")
    results: dict[str, list[dict]] = {"none": [], "reading": [], "stalled": []}
    for _ in range(rounds):
        for mode in results:
            results[mode].append(stress_round(mode, n, sndhwm))
    print(f"{'subscriber':<12}{'msg/s':>10}{'p99 send µs':>13}{'max send µs':>13}{'dropped (counted)':>19}{'subscriber lost':>17}")
    for mode, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        p99 = statistics.median(r["p99_us"] for r in runs)
        worst = max(r["max_us"] for r in runs)
        dropped = statistics.median(r["dropped"] for r in runs)
        lost = "-" if runs[0]["lost"] is None else f"{statistics.median(r['lost'] for r in runs):.0f}"
        print(f"{mode:<12}{rate:>10.0f}{p99:>13.1f}{worst:>13.0f}{dropped:>19.0f}{lost:>17}")


def pipeline_run(stalled: bool, sndhwm: int) -> tuple[float, int, int, dict]:
    from rtpick.config import Config
    from rtpick.ingest.replay import ReplayIngest
    from rtpick.pipeline import Pipeline
    from rtpick.publish.outputs import Outputs

    config = Config()
    config.inference.threads = 1
    config.publish.endpoint = "tcp://127.0.0.1:*"
    config.publish.sndhwm = sndhwm
    config.publish.linger_s = 0
    outputs = Outputs(config)
    pipeline = Pipeline(config, observer=outputs.metrics)
    outputs.start(pipeline)
    context = zmq.Context()
    sock = stalled_subscriber(context, outputs.publisher.endpoint) if stalled else None
    join(outputs.publisher, sock)
    records = list(ReplayIngest([str(REPO / "rtpick" / "data" / "oklahoma_2013-06-16")]).records())
    picks = 0
    t0 = time.perf_counter()
    for i, record in enumerate(records):
        out = pipeline.feed(record)
        outputs.publish_picks(out)
        picks += len(out)
        if i % 10 == 0:  # a heartbeat every 10 records: far more messages than real life, to load the socket
            outputs.publisher.publish(outputs.status())
    out = pipeline.flush()
    outputs.publish_picks(out)
    picks += len(out)
    elapsed = time.perf_counter() - t0
    dropped = dict(outputs.publisher.dropped)
    outputs.close()
    if sock is not None:
        sock.close(linger=0)
    context.term()
    return elapsed, len(records), picks, dropped


def pipeline_bench(rounds: int) -> None:
    import logging

    import torch

    logging.getLogger("rtpick").setLevel(logging.ERROR)  # the archive's known gap is logged once per run

    torch.set_num_threads(1)
    sndhwm = 10
    print(f"\n## Pipeline: Oklahoma archive as fast as possible, PhaseNet on CPU (1 thread), sndhwm={sndhwm}, {rounds} rounds")
    pipeline_run(False, sndhwm)  # warm-up: numba compilation, model load
    times: dict[str, list[float]] = {"none": [], "stalled": []}
    info = {}
    for _ in range(rounds):
        for mode in times:
            elapsed, n_records, n_picks, dropped = pipeline_run(mode == "stalled", sndhwm)
            times[mode].append(elapsed)
            info[mode] = (n_records, n_picks, dropped)
    print(f"{'subscriber':<12}{'median s':>10}{'min s':>8}{'max s':>8}{'records':>9}{'picks':>7}  dropped (counted)")
    for mode, values in times.items():
        n_records, n_picks, dropped = info[mode]
        print(f"{mode:<12}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}{n_records:>9}{n_picks:>7}  {dropped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sndhwm", type=int, default=1000)
    parser.add_argument("--no-pipeline", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("SEISBENCH_CACHE_ROOT", _seisbench_cache())
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    stress(args.messages, args.rounds, args.sndhwm)
    if not args.no_pipeline:
        pipeline_bench(max(args.rounds, 5))  # each run is short: more rounds against noise


def _seisbench_cache() -> str:
    """A writable copy of ../shared/seisbench-cache (SeisBench may write next to the weights)."""
    import shutil

    src = REPO.parent / "shared" / "seisbench-cache"
    dst = Path(tempfile.mkdtemp(prefix="rtpick-bench-sb-"))
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return str(dst)


if __name__ == "__main__":
    main()

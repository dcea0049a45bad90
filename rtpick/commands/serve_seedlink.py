"""``rtpick serve-seedlink PATH... --port N``: replay miniSEED files as a SeedLink 3.1 server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="miniSEED files or directories")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=18000, help="TCP port (default 18000; 0 = any free port)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="replay speed: 0 = whole archive at once (default), 1 = real time, 10 = 10x")
    parser.add_argument("--shift-to-now", action="store_true", help="shift data times so the archive starts now")
    parser.add_argument("--record-seconds", type=float, default=None, metavar="SECONDS",
                        help="cut the data into records of this many seconds (e.g. 1, as Earthworm tracebufs) instead of "
                             "full 512-byte records (4-7 s of 100 Hz data each, which dominates end-to-end latency)")
    parser.add_argument("--loop", action="store_true", help="replay the archive again and again (times shifted)")
    parser.add_argument("--origin", type=float, metavar="UNIX_TIME",
                        help="wall time (s since 1970) at which the archive's first sample is released; give the same "
                        "value after a restart to get the same ring at the same moment (default: now)")
    parser.add_argument("--max-clients", type=int, default=100,
                        help="simultaneous clients; one more is answered ERROR and closed (default 100)")
    parser.add_argument("--send-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="disconnect a client that leaves its 1 MiB send queue full this long (default 120)")
    parser.add_argument("--handshake-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="disconnect a client that sends no complete command this long before streaming (default 60)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    from rtpick.seedlink_server.archive import Archive
    from rtpick.seedlink_server.server import ReplayServer

    if min(args.max_clients, args.send_timeout, args.handshake_timeout) <= 0:
        print("rtpick serve-seedlink: --max-clients and the timeouts must be positive", file=sys.stderr)
        return 2
    if args.loop and args.speed <= 0:
        print("rtpick serve-seedlink: --loop needs a --speed above 0 (it would fill the ring as fast as the CPU allows)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        archive = Archive(args.paths, record_seconds=args.record_seconds)
    except (OSError, ValueError, TypeError) as exc:
        logging.getLogger("rtpick.seedlink_server").error("cannot read archive: %s", exc)
        return 2

    async def main() -> None:
        server = ReplayServer(archive, host=args.host, port=args.port, speed=args.speed,
                              shift_to_now=args.shift_to_now, loop=args.loop, max_clients=args.max_clients,
                              send_timeout_s=args.send_timeout, handshake_timeout_s=args.handshake_timeout,
                              origin_ns=None if args.origin is None else int(args.origin * 1e9))
        await server.start()
        print(f"listening on {args.host}:{server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    try:
        asyncio.run(main())
    except OSError as exc:
        logging.getLogger("rtpick.seedlink_server").error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 3
    return 0

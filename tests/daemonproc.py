"""``rtpick run`` as a subprocess under observation (fault tests, soak bench).

Output goes to files, not pipes: a daemon that logs a lot must never block on a
full pipe while the test waits for something else. Every wait is bounded, and
:meth:`RtpickRun.kill` reaps the process, so nothing outlives the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def rtpick_env() -> dict[str, str]:
    """One torch/BLAS thread, unbuffered stdout (a kill -9 loses no printed pick), this checkout first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def read_picks(path: Path) -> list[dict]:
    """The ``rtpick.pick/1`` documents among the JSON lines of ``path`` (a torn last line is skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("schema") == "rtpick.pick/1":
            out.append(doc)
    return out


def replay_picks(paths: list[str], config: Path, workdir: Path, name: str = "replay", timeout_s: float = 600) -> list[dict]:
    """``rtpick replay`` of ``paths``: the reference every live run is compared with."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.run([sys.executable, "-m", "rtpick", "replay", *paths, "--config", str(config),
                               "--progress", "never"], cwd=REPO, env=rtpick_env(), stdout=o, stderr=e, timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(f"rtpick replay failed ({proc.returncode}):\n{err.read_text()[-3000:]}")
    return read_picks(out)


def scrape(url: str, timeout_s: float = 5.0) -> dict[tuple[str, frozenset], float]:
    """Prometheus text exposition → {(metric name, frozenset of label pairs): value}."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def by_label(samples: dict[tuple[str, frozenset], float], name: str, label: str) -> dict[str, float]:
    """One metric's values keyed by one label (e.g. ``rtpick_records_rejected_total`` by ``cause``)."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name and label in dict(labels)}


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RtpickRun:
    """One ``rtpick run`` process; stdout → ``<name>.out``, stderr → ``<name>.err`` in ``workdir``."""

    def __init__(self, args: list[str], workdir: Path, name: str = "run"):
        self.out_path, self.err_path = workdir / f"{name}.out", workdir / f"{name}.err"
        self._out, self._err = self.out_path.open("wb"), self.err_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "rtpick", "run", *args], cwd=REPO, env=rtpick_env(),
                                     stdout=self._out, stderr=self._err)
        self.peak_rss_kib = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample_rss(self) -> int | None:
        rss = rss_kib(self.pid) if self.alive() else None
        if rss is not None:
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
        return rss

    def stderr(self, tail: int = 4000) -> str:
        return self.err_path.read_text(errors="replace")[-tail:]

    def picks(self) -> list[dict]:
        return read_picks(self.out_path)

    def wait_for(self, done: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2,
                 explain: Callable[[], str] = str) -> None:
        """Poll ``done`` (sampling RSS) until true; fail if the daemon exits or ``timeout_s`` passes
        (the message adds ``explain()`` and the end of the daemon's log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"rtpick run exited ({self.proc.returncode}) while waiting for {what}:\n{self.stderr()}")
            self.sample_rss()
            if done():
                return
            time.sleep(interval_s)
        raise AssertionError(f"no {what} within {timeout_s:g} s: {explain()}\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> float:
        """Send ``sig``, wait at most ``timeout_s`` for the exit; seconds it took (killed and failed after that)."""
        t0 = time.monotonic()
        if self.alive():
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"rtpick run still running {timeout_s:g} s after signal {sig}:\n{self.stderr()}") from None
        finally:
            self._close_files()
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL and reap (idempotent)."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._close_files()

    def _close_files(self) -> None:
        self._out.close()
        self._err.close()


def state_stations(path: Path) -> dict[str, int]:
    """The ``stations`` map (NET_STA → last sequence number) of a state file; {} while it is unreadable."""
    try:
        doc = json.loads(path.read_text())
        return dict(doc.get("stations", {}))
    except (OSError, ValueError, AttributeError):
        return {}


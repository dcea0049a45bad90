"""Driving a subprocess under test: bounded in time, never left running."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def drive_until_exit(proc: subprocess.Popen, step: Callable[[], None], timeout_s: float = 30.0, interval_s: float = 0.1) -> tuple[str, str]:
    """Call ``step`` every ``interval_s`` until ``proc`` exits or ``timeout_s`` passes; return its output.

    A process still running at the end is killed (and reaped), so a failing test leaks nothing.
    """
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            step()
            time.sleep(interval_s)
        return proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

"""Shared fixtures: offline PhaseNet weights, the bundled Oklahoma data, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OKLAHOMA = REPO / "rtpick" / "data" / "oklahoma_2013-06-16"
NCEDC_NPZ = SHARED / "data" / "ncedc_picks_100hz.npz"

# SeisBench reads SEISBENCH_CACHE_ROOT at import time: point it at a writable temp
# copy of the shared weights before any test imports seisbench. Nothing downloads.
_CACHE_SRC = SHARED / "seisbench-cache"
_CACHE_DIR = Path(tempfile.mkdtemp(prefix="rtpick-sbcache-"))
if _CACHE_SRC.is_dir():
    shutil.copytree(_CACHE_SRC, _CACHE_DIR, dirs_exist_ok=True)
os.environ["SEISBENCH_CACHE_ROOT"] = str(_CACHE_DIR)


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def oklahoma_dir() -> Path:
    return OKLAHOMA


@pytest.fixture(scope="session")
def phasenet():
    """The real California PhaseNet ('original') from the offline cache, in eval mode."""
    if not (_CACHE_DIR / "models" / "v3" / "phasenet").is_dir():
        pytest.fail(f"PhaseNet weights not found: expected {_CACHE_SRC} (../shared/seisbench-cache)")
    import seisbench.models as sbm

    model = sbm.PhaseNet.from_pretrained("original")
    model.eval()
    return model


def free_port() -> int:
    """An ephemeral TCP port on localhost that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def table(oklahoma_dir):
    """1D travel-time table of the bundled Oklahoma velocity model (associator and locator tests)."""
    from rtpick.associate import load_table

    return load_table(str(oklahoma_dir / "Oklahoma.nd"))


@pytest.fixture(scope="module")
def stations(oklahoma_dir):
    """~50 distinct Oklahoma stations in a 150 km box (the association benchmark's geometry)."""
    import numpy as np

    from rtpick.associate import load_stations

    st = load_stations(oklahoma_dir / "tt_stations_1D.db", network="OK")
    _, first = np.unique(np.round(np.c_[st.latitude, st.longitude], 3), axis=0, return_index=True)
    st = st.subset(np.sort(first))
    inside = (np.abs(st.latitude - 35.8) < 0.675) & (np.abs(st.longitude + 97.0) < 0.83)
    return st.subset(np.flatnonzero(inside))

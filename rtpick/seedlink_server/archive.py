"""miniSEED archive → 512-byte SeedLink packets with deterministic per-station sequence numbers.

The archive is read once with ObsPy and re-packed into 512-byte records
(Steim-2 for integer data), so any archive (other record lengths, float data)
becomes valid SeedLink v3 payload. Packing is deterministic: the same files
give the same bytes, the same release order and the same sequence numbers, so
a restarted server holds the "same ring" and honours resume requests.

With ``record_seconds`` (e.g. 1.0, as Earthworm tracebufs) each trace is cut
into pieces of that many seconds of data first, each packed on its own (one
512-byte record per piece at up to ~100 Hz): a packet then leaves when one
second of data is complete, instead of the 4-7 s a full Steim-2 record of
100 Hz data holds, which otherwise dominates end-to-end latency.

Release order is by packet end time (when a data logger could have sent it),
then stream id; sequence numbers count from 1 per station in that order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NS = 1_000_000_000
RECLEN = 512
SEQ_MODULO = 0x1000000  # v3 sequence numbers are 6 hex digits


@dataclass(slots=True)
class Packet:
    """One 512-byte miniSEED record of one channel, with its SeedLink sequence number."""

    station: str  # "NET_STA", the SeedLink station key
    loc: str
    cha: str
    seq: int
    start_ns: int
    end_ns: int  # time just after the last sample
    data: bytes  # exactly RECLEN bytes of miniSEED

    @property
    def stream_id(self) -> str:
        net, sta = self.station.split("_", 1)
        return f"{net}.{sta}.{self.loc}.{self.cha}"


def _encoding_for(data: np.ndarray) -> tuple[np.ndarray, str]:
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.int32), "STEIM2"
    if data.dtype == np.float32:
        return data, "FLOAT32"
    return data.astype(np.float64), "FLOAT64"


def _pieces(trace, record_seconds: float | None):
    """The trace itself, or a stream of consecutive pieces of ``record_seconds`` of data each (the last may be shorter)."""
    import obspy

    if not record_seconds:
        return trace
    n = max(1, int(round(record_seconds * trace.stats.sampling_rate)))
    out = obspy.Stream()
    st = trace.stats
    for first in range(0, len(trace.data), n):
        header = {"network": st.network, "station": st.station, "location": st.location, "channel": st.channel,
                  "sampling_rate": st.sampling_rate, "starttime": st.starttime + first / st.sampling_rate}
        out.append(obspy.Trace(trace.data[first:first + n].copy(), header=header))
    return out


def _pack_trace(trace, shift_s: int, record_seconds: float | None = None) -> list[tuple[int, int, str, str, str, bytes]]:
    """Re-pack one trace into 512-byte records: (start_ns, end_ns, net_sta, loc, cha, bytes)."""
    from pymseed import MS3Record

    trace = trace.copy()
    trace.data, encoding = _encoding_for(trace.data)
    trace.stats.starttime += shift_s
    buf = io.BytesIO()
    _pieces(trace, record_seconds).write(buf, format="MSEED", reclen=RECLEN, encoding=encoding, byteorder=">")
    raw = buf.getvalue()
    out = []
    st = trace.stats
    key = f"{st.network}_{st.station}"
    for offset in range(0, len(raw), RECLEN):
        chunk = raw[offset:offset + RECLEN]
        rec = MS3Record.parse(chunk)
        start = int(rec.starttime)
        end = start + round(rec.samplecnt * NS / rec.samprate)
        out.append((start, end, key, st.location, st.channel, chunk))
    return out


class Archive:
    """The traces of some miniSEED files, packable into SeedLink packets (optionally time-shifted)."""

    def __init__(self, paths: Iterable[str | Path], record_seconds: float | None = None):
        import obspy

        if record_seconds is not None and not record_seconds > 0:
            raise ValueError(f"record length must be a positive number of seconds, got {record_seconds}")
        self.record_seconds = record_seconds

        files: list[Path] = []
        for path in paths:
            path = Path(path)
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in (".msd", ".mseed", ".miniseed")))
            else:
                files.append(path)
        if not files:
            raise ValueError("no miniSEED files given")
        stream = obspy.Stream()
        for file in files:
            stream += obspy.read(str(file), format="MSEED")
        stream.sort(keys=["network", "station", "location", "channel", "starttime"])
        self.traces = list(stream)
        self.files = files
        self.start_ns = min(_ns(tr.stats.starttime) for tr in self.traces)
        self.end_ns = max(_ns(tr.stats.endtime) + round(NS / tr.stats.sampling_rate) for tr in self.traces)

    @property
    def span_s(self) -> int:
        """Whole seconds covering the archive; loop passes are shifted by this much."""
        return math.ceil((self.end_ns - self.start_ns) / NS)

    @property
    def stations(self) -> list[str]:
        return sorted({f"{tr.stats.network}_{tr.stats.station}" for tr in self.traces})

    def packets(self, shift_s: int = 0, first_seq: dict[str, int] | None = None) -> list[Packet]:
        """All records of the archive in release order, shifted by whole seconds.

        ``first_seq`` (updated in place) gives each station's next sequence number;
        it lets loop passes continue numbering where the previous pass ended.
        """
        rows = []
        for trace in self.traces:
            rows.extend(_pack_trace(trace, shift_s, self.record_seconds))
        rows.sort(key=lambda r: (r[1], r[2], r[3], r[4], r[0]))
        next_seq = first_seq if first_seq is not None else {}
        packets = []
        for start, end, key, loc, cha, data in rows:
            seq = next_seq.get(key, 1)
            next_seq[key] = (seq + 1) % SEQ_MODULO
            packets.append(Packet(key, loc, cha, seq, start, end, data))
        return packets


def _ns(utc) -> int:
    """ObsPy UTCDateTime → integer ns (exact: UTCDateTime stores ns internally)."""
    return int(utc.ns)

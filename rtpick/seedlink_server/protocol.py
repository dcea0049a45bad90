"""SeedLink 3.1 wire details for the replay server: selectors, times, INFO documents."""

from __future__ import annotations

import fnmatch
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.sax.saxutils import quoteattr

import numpy as np

from rtpick.seedlink_server.archive import RECLEN, Packet

SOFTWARE = "SeedLink v3.1 (rtpick replay server)"
HELLO_CAPS = "SLPROTO:3.1 NSWILDCARD"
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Selector:
    """One SeisComP-style ``[!]LLCCC[.T]`` selector; '?' matches one character, '-' is a blank location."""

    negate: bool
    loc: str | None  # None: any location
    cha: str
    kind: str | None  # None or "D": data records (all we serve)

    @classmethod
    def parse(cls, text: str) -> Selector:
        negate = text.startswith("!")
        body = text[1:] if negate else text
        kind = None
        if "." in body:
            body, kind = body.split(".", 1)
        if not body or len(body) > 5 or len(body) == 4 or not all(c.isalnum() or c in "?*-" for c in body):
            raise ValueError(f"bad selector {text!r}")
        if len(body) == 5:
            return cls(negate, body[:2].replace("-", " "), body[2:], kind)
        return cls(negate, None, body, kind)

    def matches(self, loc: str, cha: str) -> bool:
        if self.kind not in (None, "", "D", "?"):
            return False
        if self.loc is not None and not fnmatch.fnmatchcase(loc.ljust(2), self.loc):
            return False
        return fnmatch.fnmatchcase(cha, self.cha.ljust(3, "?") if len(self.cha) < 3 else self.cha)


def selected(selectors: list[Selector], loc: str, cha: str) -> bool:
    """SeisComP semantics: no positive selector = everything; negations always exclude."""
    positives = [s for s in selectors if not s.negate]
    if positives and not any(s.matches(loc, cha) for s in positives):
        return False
    return not any(s.matches(loc, cha) for s in selectors if s.negate)


def parse_time(text: str) -> int:
    """SeedLink v3 time ``YYYY,MM,DD,hh,mm,ss[.ffff]`` (or ISO-8601) → ns; ValueError for anything else.

    Overflowing or non-finite fields (``1e400``, ``nan``) are ValueErrors too, so the
    session answers ``ERROR`` instead of failing.
    """
    try:
        return _parse_time(text.strip())
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"bad time {text!r}: {exc}") from None


def _parse_time(text: str) -> int:
    if "," in text:
        parts = text.split(",")
        if not 3 <= len(parts) <= 6:
            raise ValueError(f"bad time {text!r}")
        sec = float(parts[5]) if len(parts) > 5 else 0.0
        if not 0.0 <= sec < 61.0:
            raise ValueError(f"bad seconds in {text!r}")
        ints = [int(p) for p in parts[:5]] + [0] * (5 - len(parts[:5]))
        base = datetime(ints[0], ints[1], ints[2], ints[3], ints[4], tzinfo=timezone.utc)
        return int(base.timestamp()) * NS + round(sec * NS)
    from rtpick.types import iso_to_ns

    return iso_to_ns(text)


def _slt(ns: int) -> str:
    """INFO time format ``YYYY/MM/DD hh:mm:ss.ffff``."""
    dt = datetime.fromtimestamp(ns // NS, tz=timezone.utc)
    return dt.strftime("%Y/%m/%d %H:%M:%S") + f".{(ns % NS) // 100_000:04d}"


def info_xml(level: str, started_ns: int, packets_by_station: dict[str, list[Packet]]) -> str:
    """The INFO document for ``ID``, ``STATIONS`` or ``STREAMS`` (same shape as SeisComP/ringserver)."""
    head = f'<?xml version="1.0"?>\n<seedlink software={quoteattr(SOFTWARE)} organization="rtpick" started="{_slt(started_ns)}"'
    if level == "ID":
        return head + "/>\n"
    lines = [head + ">"]
    for key in sorted(packets_by_station):
        pkts = packets_by_station[key]
        net, sta = key.split("_", 1)
        begin = f"{pkts[0].seq:06X}" if pkts else "000000"
        end = f"{(pkts[-1].seq + 1) % 0x1000000:06X}" if pkts else "000000"
        attrs = f'name="{sta}" network="{net}" description="" begin_seq="{begin}" end_seq="{end}" stream_check="enabled"'
        if level == "STATIONS":
            lines.append(f"<station {attrs}/>")
            continue
        lines.append(f"<station {attrs}>")
        streams: dict[tuple[str, str], list[int]] = {}
        for p in pkts:
            span = streams.setdefault((p.loc, p.cha), [p.start_ns, p.end_ns])
            span[0], span[1] = min(span[0], p.start_ns), max(span[1], p.end_ns)
        for (loc, cha), (start, end_ns) in sorted(streams.items()):
            lines.append(
                f'<stream location="{loc}" seedname="{cha}" type="D" begin_time="{_slt(start)}" '
                f'end_time="{_slt(end_ns)}" begin_recno="0" end_recno="0" gap_check="disabled" gap_treshold="0"/>'
            )
        lines.append("</station>")
    lines.append("</seedlink>\n")
    return "\n".join(lines)


def info_packets(xml: str) -> list[bytes]:
    """An INFO reply as v3 ``SLINFO`` packets: ASCII miniSEED records, '*' on all but the last."""
    import obspy

    trace = obspy.Trace(data=np.frombuffer(xml.encode("ascii", "replace"), dtype="S1"))
    trace.stats.network, trace.stats.station, trace.stats.channel = "SL", "INFO", "LOG"
    trace.stats.sampling_rate = 1.0
    buf = io.BytesIO()
    trace.write(buf, format="MSEED", reclen=RECLEN, encoding="ASCII")
    raw = buf.getvalue()
    records = [raw[i:i + RECLEN] for i in range(0, len(raw), RECLEN)]
    return [b"SLINFO " + (b"*" if i < len(records) - 1 else b" ") + rec for i, rec in enumerate(records)]

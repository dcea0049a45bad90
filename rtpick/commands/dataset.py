"""``rtpick dataset build``: an observatory's catalogue and archive (or a teacher's picks) → a SeisBench training folder.

    rtpick dataset build --catalog events.xml --sds /archive --inventory stations.xml --out data/ok
    rtpick dataset build --pseudo-labels seisbench:PhaseNet/original --mseed day/ --start 2024-01-01 \\
        --end 2024-01-02 --inventory stations.xml [--associate --config rtpick.toml] --out data/ok-pseudo

Writes ``OUT/metadata.csv`` + ``OUT/waveforms.hdf5`` (what ``rtpick adapt --data OUT``
reads) and ``OUT/build_report.json``; prints a summary with unusable picks by cause.
Exit 2 on bad arguments or unreadable inputs, 0 otherwise (also when picks were
unusable: they are in the report).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rtpick.adapt.build import BuildConfig
    from rtpick.adapt.pseudo import PseudoConfig

    d, q = BuildConfig(), PseudoConfig()
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("build", help="build a labelled SeisBench folder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--catalog", help="QuakeML or SeisComP XML with picks (ObsPy read_events)")
    labels.add_argument("--pseudo-labels", metavar="MODEL", help="no analyst picks: label with this teacher's confident picks (model spec)")
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sampling-rate", type=float, default=d.sampling_rate, help="the model's rate; traces are resampled to it (default 100 Hz)")
    p.add_argument("--trace-length", type=float, default=d.trace_length_s, help="seconds per trace (default 60)")
    p.add_argument("--before", type=float, default=d.before_s, help="trace start before the event's first pick at the station, s (default 20)")
    p.add_argument("--noise-fraction", type=float, default=d.noise_fraction, help="noise traces from pick-free times per earthquake trace (default 0.1)")
    p.add_argument("--split", default=",".join(f"{v:g}" for v in d.split), help="train,dev,test fractions of events (default 0.7,0.1,0.2)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--min-sampling-rate", type=float, default=d.min_sampling_rate, help="channels below this rate are unusable (default 20 Hz)")
    p.add_argument("--clip-counts", type=float, default=None, help="digitiser clip level in counts (default: detect flat tops only)")
    g = p.add_argument_group("pseudo-labels")
    g.add_argument("--start", help="start of the continuous data to label (UTC, ISO 8601)")
    g.add_argument("--end", help="end of the continuous data to label")
    g.add_argument("--stations", action="append", default=[], metavar="GLOB", help="NET.STA.LOC.FAM globs of the stations to label (default: all the inventory/folder holds)")
    g.add_argument("--p-confidence", type=float, default=q.confidence[0], help="teacher P picks at or above this become labels (default 0.5)")
    g.add_argument("--s-confidence", type=float, default=q.confidence[1], help="teacher S picks at or above this become labels (default 0.5)")
    g.add_argument("--detection", type=float, default=q.detection, help="teacher picks between this and the confidence mark windows as unusable (default 0.3, SeisBench's and the daemon's threshold)")
    g.add_argument("--associate", action="store_true", help="keep only picks that rtpick's associator puts into a located event ([associate] of --config)")
    g.add_argument("--config", help="config TOML whose [associate] section is used with --associate")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Waveform archive, inventory and pick selection (shared with ``rtpick evaluate --catalog``)."""
    parser.add_argument("--sds", help="SDS archive root")
    parser.add_argument("--mseed", help="folder of miniSEED files (searched recursively)")
    parser.add_argument("--fdsn", help="FDSN web service base URL or ObsPy short name (needs network access)")
    parser.add_argument("--inventory", help="StationXML (or CSV network,station,latitude,longitude,elevation_m): known stations, channel families, coordinates, Z12 orientation")
    parser.add_argument("--manual-only", action="store_true", help="use only picks with evaluation mode 'manual' (automatic ones are counted)")


def run(args: argparse.Namespace) -> int:
    from rtpick.adapt.build import BuildConfig, build, load_station_info, summary
    from rtpick.adapt.catalog import read_catalog

    try:
        from rtpick.adapt.archive import open_source

        source = open_source(args.sds, args.mseed, args.fdsn)
        stations, inventory = load_station_info(args.inventory)
        cfg = BuildConfig(
            sampling_rate=args.sampling_rate, trace_length_s=args.trace_length, before_s=args.before, noise_fraction=args.noise_fraction,
            split=tuple(float(v) for v in args.split.split(",")), seed=args.seed, min_sampling_rate=args.min_sampling_rate, clip_counts=args.clip_counts,
        )
        if len(cfg.split) != 3:
            raise ValueError("--split needs three fractions train,dev,test")
        provenance = {"inventory": args.inventory or ""}
        if args.catalog:
            events, picks, tally = read_catalog(args.catalog, manual_only=args.manual_only)
            uncertain = []
            provenance["catalog"] = args.catalog
        else:
            events, picks, uncertain, tally = _pseudo(args, source, stations)
            provenance["pseudo_labels"] = args.pseudo_labels
    except (OSError, ValueError) as exc:
        print(f"rtpick dataset build: {exc}", file=sys.stderr)
        return 2
    report = build(args.out, source, events, picks, cfg, tally=tally, stations=stations, inventory=inventory, uncertain=uncertain, provenance=provenance)
    print(f"{args.out}: {summary(report)}")
    print(f"report: {args.out}/build_report.json")
    return 0


def _pseudo(args, source, stations):
    """Teacher picks on the continuous data → (events, labels, uncertain picks, tally)."""
    from obspy import UTCDateTime

    from rtpick.adapt.catalog import Tally
    from rtpick.adapt.models import load_picker
    from rtpick.adapt.pseudo import PseudoConfig, associated_events, group_events, split_by_confidence, teacher_picks

    if not (args.start and args.end):
        raise ValueError("--pseudo-labels needs --start and --end (the span of continuous data to label)")
    t0, t1 = UTCDateTime(args.start), UTCDateTime(args.end)
    targets = _stations_to_label(source, stations, args.stations)
    if not targets:
        raise ValueError("no stations to label: give --inventory (or a --mseed folder) and check --stations")
    cfg = PseudoConfig(confidence=(args.p_confidence, args.s_confidence), detection=args.detection)
    model = load_picker(args.pseudo_labels)
    tally = Tally()
    found = teacher_picks(model, source, targets, t0, t1, cfg)
    labels, uncertain = split_by_confidence(found, cfg, tally)
    if args.associate:
        from rtpick.config import load_config

        events, labels = associated_events(labels, load_config(args.config).associate, tally)
    else:
        events, labels = group_events(labels, cfg, tally)
    return events, labels, uncertain, tally


def _stations_to_label(source, stations, globs: list[str]) -> list[tuple[str, str, str, str]]:
    """(net, sta, loc, family) of every station the inventory (or the miniSEED folder) holds, filtered by globs."""
    from rtpick.adapt.build import family_rank

    found = set()
    index = getattr(source, "index", None)
    if index:
        for (net, sta, loc), entries in index.items():
            for *_, cha in entries:
                found.add((net, sta, loc, cha[:2] + "?"))
    for key, info in stations.items():
        parts = key.split(".")
        if len(parts) == 3:
            found.update((*parts, fam) for fam in info.families[:1])
    keep = sorted(t for t in found if not globs or any(fnmatch.fnmatchcase(".".join(t), g) for g in globs))
    best: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}
    for item in sorted(keep, key=lambda t: family_rank(t[3])):
        best.setdefault(item[:3], item)  # one family per station (HH before BH, EH, ...): one label per arrival
    return sorted(best.values())

"""What every picking command does first: config, logging, model lanes, with documented exit codes.

Failures raise :class:`StartupError`; ``rtpick.cli.main`` prints its message and
exits with its code (2 = configuration, 3 = model), which systemd's
``RestartPreventExitStatus=`` uses to avoid restarting into the same error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from rtpick.config import Config, ConfigError, load_config

EXIT_CONFIG = 2
EXIT_MODEL = 3


class StartupError(Exception):
    """A start-up failure with the process exit code it maps to."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def configure(path: str | None, overrides: Callable[[Config], Config] | None = None) -> Config:
    """Load the config (plus command-line overrides) and set up logging on stderr."""
    try:
        config = load_config(path)
        if overrides is not None:
            config = overrides(config)
    except ConfigError as exc:
        raise StartupError(EXIT_CONFIG, f"config error: {exc}") from None
    except ValueError as exc:
        raise StartupError(EXIT_CONFIG, f"config error (command line): {exc}") from None
    logging.basicConfig(level=config.logging.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return config


def plan_lanes(config: Config):
    """The lanes of ``config`` (one per region, models loaded), or a :class:`StartupError` naming region and key.

    A model that does not load exits 3 (model error); every other problem — inventory,
    overrides that do not fit the model, a buffer too short for a window — exits 2.
    The pipeline takes the plan's :class:`~rtpick.inference.regions.LaneSpec` as they
    are: ``config`` is not changed (model-derived settings live in the specs).
    """
    from rtpick.inference.regions import LanePlan, RegionError, RegionRouter, build_lane_specs, load_region_models

    try:
        models = load_region_models(config)
    except RegionError as exc:
        raise StartupError(EXIT_MODEL, f"model error: {exc}") from None
    try:
        router = RegionRouter.from_config(config)
    except (OSError, ValueError) as exc:
        raise StartupError(EXIT_CONFIG, f"config error: key 'stream.inventory': {exc}") from None
    try:
        specs = build_lane_specs(config, models)
    except RegionError as exc:
        raise StartupError(EXIT_CONFIG, f"config error: {exc}") from None
    return LanePlan(specs, models, router)


def horizon_s(plan) -> float:
    """Seconds of data the longest lane buffer holds: how far ahead ingest may jump before it is a time jump."""
    return max(spec.buffer_samples / spec.fs for spec in plan.specs)

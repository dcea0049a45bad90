"""What every picking command does first: config, logging, model, with documented exit codes.

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


def load_configured_model(config: Config):
    """The configured model, or a :class:`StartupError` naming the spec; applies its defaults to ``config``.

    The pipeline runs one model (the implicit ``default`` region) until it runs one
    lane per region, so ``[[regions]]`` are refused here rather than ignored. The
    lane's resolved settings — overlap, stacking, blinding, thresholds and buffer
    length derived from the model unless the file sets them (see
    :func:`rtpick.inference.regions.build_lane_specs`) — are written back into the
    ``[inference]``/``[picking]``/``[stream]`` options the pipeline reads, so a 50 Hz
    model gets SeisBench's overlap in its own samples and an adapted model its thresholds.
    """
    from rtpick.inference.models import ModelError, load_model
    from rtpick.inference.regions import RegionError, build_lane_specs

    if config.regions:
        names = ", ".join(region.name for region in config.regions)
        raise StartupError(EXIT_CONFIG, f"config error: [[regions]] ({names}) are not run by this version's pipeline yet (one model for all stations); `rtpick models --config FILE` shows what they resolve to. Remove them to run with [inference].")
    try:
        loaded = load_model(config.inference.model, config.inference.device)
    except ModelError as exc:
        raise StartupError(EXIT_MODEL, f"model error: {exc}") from None
    try:
        (lane,) = build_lane_specs(config, {(config.inference.model, config.inference.device): loaded})
    except RegionError as exc:
        raise StartupError(EXIT_CONFIG, f"config error: {exc}") from None
    config.inference.overlap_s = lane.overlap / lane.fs
    config.inference.stacking = lane.stacking
    config.inference.blinding_samples = lane.blinding
    config.picking.thresholds = dict(lane.thresholds)
    config.stream.buffer_seconds = lane.buffer_samples / lane.fs
    return loaded

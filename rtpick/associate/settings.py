"""Tuning of the swarm associator (mirrored by the ``[associate]`` config section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AssociatorSettings:
    """Tuning of :class:`SwarmAssociator` (mirrored by the ``[associate]`` config section)."""

    grid_spacing_km: float = 6.0  # coarse node spacing
    depths_km: tuple[float, ...] = (3.0, 9.0, 15.0)  # coarse node depths
    max_depth_km: float = 25.0  # fine search depth limit
    margin_km: float = 30.0  # search area beyond the station bounding box
    vote_distance_km: float = 80.0  # stations farther than this from a node do not vote for it
    bin_s: float = 0.5  # origin-time resolution of the stack
    tolerance_s: float = 0.3  # pick tolerance floor (s)
    tolerance_fraction: float = 0.02  # plus this fraction of the travel time
    min_picks: int = 8
    min_p: int = 4
    min_s: int = 0
    min_stations: int = 4
    min_pick_fraction: float = 0.5  # detection radius: farthest P station with this share of nearer stations picked
    attach_margin_km: float = 20.0  # later picks attach up to twice the detection radius plus this
    min_score: float = 3.0  # sum of weight * kernel over the event's picks
    stack_threshold: float = 5.0  # stack value (probability-weighted votes) that makes a cell a candidate
    retry_margin: float = 1.0  # a rejected cell is tried again once its votes grew by this much
    horizon_s: float = 120.0  # picks older than this (behind the newest) expire; events become final
    step_s: float = 1.0  # how often (data time) the detection runs
    use_probability: bool = True
    merge_window_s: float = 20.0  # open events this close in origin time are checked for a merge
    merge_fraction: float = 0.9  # a joint solution must keep this fraction of both events' picks
    max_candidates_per_step: int = 200
    depth_prior_km: float = 8.0  # locator: regional mean depth, where the network cannot resolve depth
    depth_prior_sigma_km: float = 8.0  # locator: width of that (weak, Gaussian) prior


# Settings a running associator takes on SIGHUP: they are read afresh at every decision.
# The rest shape the voting grid, the travel-time tolerances or the pick ring: restart.
LIVE_SETTINGS = frozenset({
    "min_picks", "min_p", "min_s", "min_stations", "min_pick_fraction", "min_score", "stack_threshold",
    "retry_margin", "use_probability", "merge_fraction", "attach_margin_km", "depth_prior_km", "depth_prior_sigma_km",
})

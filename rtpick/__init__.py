"""rtpick: real-time deep-learning phase picking for seismic observatories."""

__version__ = "0.1.0"

"""rtpick.adapt."""

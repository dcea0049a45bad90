"""rtpick.stream."""

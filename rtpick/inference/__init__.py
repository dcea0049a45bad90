"""rtpick.inference."""

"""rtpick.service."""

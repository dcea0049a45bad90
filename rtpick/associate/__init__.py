"""rtpick.associate."""

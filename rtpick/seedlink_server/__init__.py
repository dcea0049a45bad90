"""rtpick.seedlink_server."""

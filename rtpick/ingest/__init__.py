"""rtpick.ingest."""

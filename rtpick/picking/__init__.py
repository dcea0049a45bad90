"""rtpick.picking."""

"""``make bench``: ServerTrack's figures beside their ceilings and Graphite's carbon-cache."""

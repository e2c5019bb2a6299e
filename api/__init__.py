"""HTTP API: a Falcon WSGI app that records loads and shows a server's rollups."""

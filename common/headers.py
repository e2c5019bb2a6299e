"""HTTP headers of the API that its clients read too (the forwarder)."""

AS_OF_HEADER = "ServerTrack-As-Of"
"""The response header of ``GET /servers/{name}/loads`` that carries the time the answer was
read from the store (every batch applied by then is in it). It travels beside the body, so the
body stays a function of the state alone; a cached answer keeps the time it was read, and a
client can tell how old what it was served is (the forwarder does)."""

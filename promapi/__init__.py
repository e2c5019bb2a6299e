"""What ServerTrack shows Prometheus: the ``/metrics/servers`` exposition, the remote-read
protocol and the matchers both share. Pure modules over columnar inputs, without I/O."""

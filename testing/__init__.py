"""What the tests, the bench and the load generator share: a fake clock, free ports, real child
processes and hosts, a real redis-server, a fleet appearing through Graphite. Product code
never imports it."""

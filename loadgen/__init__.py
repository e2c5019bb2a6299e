"""`servertrack loadgen`: a simulated fleet that checks every number a host reports."""

"""Agent: samples this node's CPU and RAM load and publishes them to the receiver."""

"""What the agent, receiver, aggregator and API share: samples, wire codecs, buckets, config."""

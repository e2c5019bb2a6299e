"""``servertrack forward``: stream per-window means to Graphite or Grok (plaintext protocol)."""

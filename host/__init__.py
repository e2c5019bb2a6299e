"""The monitoring host: the `servertrack` command line, the `servertrack run` supervisor and key
generation."""

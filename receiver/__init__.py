"""Receiver: validates and de-duplicates samples and forwards one batch per second."""

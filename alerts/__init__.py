"""Alerting: rules evaluated over every server, and their delivery to Prometheus' Alertmanager.

- :mod:`~servertrack.alerts.rules`: the rule model, durations, templates, the YAML loader that
  names the line and field of every mistake, and the default rules.
- :mod:`~servertrack.alerts.evaluate`: :class:`AlertEvaluator`, which evaluates every rule over a
  columnar fleet snapshot (:class:`FleetColumns`) with Prometheus' states, and says what to list
  and what to send. No I/O, no clock of its own.
- :mod:`~servertrack.alerts.delivery`: :class:`AlertmanagerClient`, one thread and one bounded
  queue per Alertmanager, POSTing to its API v2 with capped, jittered backoff.
- :mod:`~servertrack.alerts.cli`: ``servertrack rules check FILE``.
"""

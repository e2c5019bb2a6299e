"""Every daemon's settings, from its flags or its ``SERVERTRACK_<DAEMON>_*`` variables, checked,
and written back by ``to_argv`` as a command line that gives the very same settings in an
environment without those variables (which is how ``servertrack run`` starts its children)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from servertrack.agent.settings import AgentSettings
from servertrack.aggregator.settings import AggregatorSettings
from servertrack.api.settings import ApiSettings
from servertrack.common.config import variable_name
from servertrack.common.settings import ConfigError, Option, Settings, field_of
from servertrack.receiver.settings import ReceiverSettings

KINDS: list[type[Settings]] = [ReceiverSettings, AggregatorSettings, ApiSettings, AgentSettings]
ON = "on"
"""A switch's sample: the flag alone on a command line, ``yes`` in its variable."""
SAMPLES: dict[type[Settings], dict[str, str]] = {
    ReceiverSettings: {
        "--bind": "tcp://127.0.0.1:15556",
        "--control": "ipc://{tmp}/control",
        "--aggregator": "ipc://{tmp}/batches",
        "--aggregator-query": "",
        "--ingest-max-connections": "100",
        "--accept-pickle": ON,
        "--flush-interval": "0.25",
        "--retention": "120.5",
        "--max-servers": "1234",
        "--dedup-limit": "99",
        "--curve-secret": "{tmp}/keys/receiver.key_secret",
        "--authorized-keys": "{tmp}/keys/authorized",
        "--graphite": "tcp://[::1]:12003",
        "--graphite-map": "{tmp}/graphite.map",
        "--graphite-max-line": "512",
        "--graphite-rate": "0.1",
        "--graphite-max-connections": "7",
        "--graphite-idle-timeout": "1e-3",
        "--graphite-line-timeout": "2.5",
        "--graphite-min-rate": "0",
    },
    AggregatorSettings: {
        "--batches": "ipc://{tmp}/batches",
        "--query": "ipc://{tmp}/query",
        "--receiver-control": "ipc://{tmp}/control",
        "--snapshot": "relative/aggregator.npz",
        "--snapshot-interval": "7",
        "--max-servers": "42",
        "--store": "redis://127.0.0.1:6390/2",
        "--store-password-file": "{tmp}/pw",
        "--store-timeout": "0.75",
        "--store-flush": "0.5",
        "--store-wait-replicas": "2",
        "--store-hold": "0",
        "--rules": "{tmp}/rules.yml",
        "--no-rules": ON,
        "--rules-interval": "2.5",
        "--alertmanager": "http://127.0.0.1:9093 https://am.example.com:9443/prefix",
        "--external-url": "http://monitor.example.com:8080",
        "--alerts-state": "relative/alerts.json",
    },
    ApiSettings: {
        "--host": "127.0.0.2",
        "--port": "18080",
        "--http": "granian",
        "--behind-buffering-proxy": ON,
        "--workers": "3",
        "--threads": "5",
        "--idle-timeout": "3",
        "--request-timeout": "4",
        "--connection-limit": "50",
        "--request-deadline": "1.5",
        "--receiver-control": "ipc://{tmp}/control",
        "--aggregator-query": "ipc://{tmp}/query",
        "--backend-timeout": "0.25",
        "--record-timeout": "2",
        "--token-file": "{tmp}/token",
        "--read-token-file": "{tmp}/read",
        "--store": "redis://127.0.0.1:6390/2",
        "--store-password-file": "{tmp}/pw",
        "--store-timeout": "3",
    },
    AgentSettings: {
        "--connect": "tcp://127.0.0.1:15556",
        "--interval": "0.5",
        "--name": "-a-name-like-a-flag",
        "--format": "pickle.gz",
        "--curve-secret": "{tmp}/keys/agent.key_secret",
        "--server-key": "{tmp}/keys/receiver.key",
    },
}


def parse(kind: type[Settings], argv: list[str]) -> Settings:
    """``kind``'s settings of ``argv``, by a parser built now (so in today's environment)."""
    parser = argparse.ArgumentParser(prog=f"servertrack {kind.COMMAND}")
    kind.add_options(parser)
    return kind.from_args(parser.parse_args(argv))


def sample_argv(kind: type[Settings], tmp: Path) -> list[str]:
    """The samples as flags; a repeated option's sample (its values separated by spaces, as
    its variable holds them) as one flag per value."""
    argv = []
    for flag, text in SAMPLES[kind].items():
        if text == ON:
            argv.append(flag)
        elif kind.option(field_of(flag)).repeated:
            argv += [f"{flag}={part.format(tmp=tmp)}" for part in text.split(" ")]
        else:
            argv.append(f"{flag}={text.format(tmp=tmp)}")
    return argv


def without_variables(kind: type[Settings], call: Callable[[], Settings]) -> Settings:
    """``call()`` with none of ``kind``'s variables set (as ``servertrack run`` starts it)."""
    with pytest.MonkeyPatch.context() as patch:
        for variable in kind.variables():
            patch.delenv(variable, raising=False)
        return call()


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.COMMAND)
def test_the_samples_give_every_option_a_value_other_than_its_default(
    kind: type[Settings], setting_files: Path
) -> None:
    """So the round trips below carry every option, and a value only a default would give
    cannot pass for one that travelled."""
    assert list(SAMPLES[kind]) == [option.flag for option in kind.OPTIONS]
    settings = parse(kind, sample_argv(kind, setting_files))
    for option in kind.OPTIONS:
        assert getattr(settings, option.field) != option.default, option.flag


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.COMMAND)
def test_flags_to_argv_and_back_give_the_same_settings(
    kind: type[Settings], setting_files: Path
) -> None:
    settings = parse(kind, sample_argv(kind, setting_files))
    assert parse(kind, settings.to_argv()) == settings


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.COMMAND)
def test_defaults_to_argv_and_back_give_the_same_settings(
    kind: type[Settings], setting_files: Path
) -> None:
    settings = parse(kind, [])
    assert parse(kind, settings.to_argv()) == settings


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.COMMAND)
def test_variables_to_argv_and_back_give_the_same_settings(
    kind: type[Settings], setting_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every option set by its variable gives what its flag gives; the command line written
    of those settings gives them again, with the variables set or not."""
    for flag, text in SAMPLES[kind].items():
        value = "yes" if text == ON else text.format(tmp=setting_files)
        monkeypatch.setenv(variable_name(kind.COMMAND, flag), value)
    settings = parse(kind, [])
    assert settings == parse(kind, sample_argv(kind, setting_files))
    argv = settings.to_argv()
    assert parse(kind, argv) == settings
    assert without_variables(kind, lambda: parse(kind, argv)) == settings


def test_a_value_that_looks_like_a_flag_is_written_with_an_equals_sign() -> None:
    assert Option("--name", None, "").to_argv("-x") == ["--name=-x"]
    assert Option("--name", None, "").to_argv("x") == ["--name", "x"]
    assert Option("--on", False, "", switch=True).to_argv(False) == []


def test_file_paths_are_made_absolute(setting_files: Path) -> None:
    """A child started from another directory finds the same file."""
    settings = parse(AggregatorSettings, ["--snapshot", "relative/aggregator.npz"])
    assert settings.snapshot == str(setting_files / "relative" / "aggregator.npz")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "argv", "flag", "reason"),
    [
        (ReceiverSettings, ["--graphite-map", "{tmp}/token"], "--graphite-map", "token:1"),
        (ReceiverSettings, ["--curve-secret", "{tmp}/keys/receiver.key_secret"], None, "together"),
        (
            AggregatorSettings,
            ["--store-password-file", "{tmp}/missing"],
            "--store-password-file",
            "cannot read",
        ),
        (ApiSettings, ["--token-file", "{tmp}/missing"], "--token-file", "cannot read token file"),
        (ApiSettings, ["--read-token-file", "{tmp}/empty"], "--read-token-file", "is empty"),
        (ApiSettings, ["--http", "granian", "--host", "0.0.0.0"], None, "--behind-buffering-proxy"),
        (
            AgentSettings,
            [
                "--curve-secret",
                "{tmp}/keys/receiver.key",
                "--server-key",
                "{tmp}/keys/receiver.key",
            ],
            "--curve-secret",
            "only a public key",
        ),
        (
            AgentSettings,
            ["--curve-secret", "{tmp}/keys/agent.key_secret", "--server-key", "{tmp}/token"],
            "--server-key",
            "cannot read a public key",
        ),
    ],
)
def test_settings_a_daemon_cannot_run_with_are_refused_naming_the_flag(
    kind: type[Settings], argv: list[str], flag: str | None, reason: str, setting_files: Path
) -> None:
    (setting_files / "empty").write_text("\n")
    with pytest.raises(ConfigError) as refused:
        parse(kind, [part.format(tmp=setting_files) for part in argv])
    assert refused.value.flag == flag
    assert reason in refused.value.reason


def test_a_repeated_flag_on_the_command_line_replaces_its_variables_values(
    setting_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = variable_name("aggregator", "--alertmanager")
    monkeypatch.setenv(variable, "http://127.0.0.1:9093  http://127.0.0.1:9094")
    from_variable = parse(AggregatorSettings, [])
    assert from_variable.alertmanager == ("http://127.0.0.1:9093", "http://127.0.0.1:9094")  # type: ignore[attr-defined]
    flags = ["--alertmanager", "http://a.example:9093", "--alertmanager", "http://b.example:9093"]
    from_flags = parse(AggregatorSettings, flags)
    assert from_flags.alertmanager == ("http://a.example:9093", "http://b.example:9093")  # type: ignore[attr-defined]
    monkeypatch.setenv(variable, "ftp://nowhere")
    with pytest.raises(SystemExit) as exit_info:
        parse(AggregatorSettings, [])
    assert exit_info.value.code == 2

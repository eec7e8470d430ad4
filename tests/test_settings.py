"""Settings: every variable documented in .env.example, and the example itself valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from realtime_bridge.settings import Settings
from tests.conftest import ROOT

EXAMPLE = ROOT / ".env.example"


def example_variables() -> dict[str, str]:
    found = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Z_]+)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    assert set(example_variables()) == {name.upper() for name in Settings.model_fields}


def test_every_example_variable_has_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            assert lines[index - 1].startswith("#"), f"{line} has no comment above it"


def test_the_example_file_is_a_valid_configuration(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(EXAMPLE.read_text())
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.database_url is None
    assert settings.migrations_dir is None
    assert settings.port == 8000
    assert settings.plugin_paths == [Path("plugins")]


def test_plugin_paths_split_on_colons_and_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_PATHS", "plugins:/opt/more,extra.py")
    assert Settings(_env_file=None).plugin_paths == [  # type: ignore[call-arg]
        Path("plugins"),
        Path("/opt/more"),
        Path("extra.py"),
    ]


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "99999")
    with pytest.raises(ValidationError, match="port"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("LOG_LEVEL", "LOUD", "'INFO'"),
        ("CAPTURE", "sometimes", "'outbox'"),
        ("PORT", "99999", "65535"),
        ("PORT", "eighty", "integer"),
        ("POLL_INTERVAL", "0", "greater than 0"),
        ("RELAY_BATCH_SIZE", "5000", "1000"),
        ("SEND_QUEUE_MAX", "2", "16"),
        ("MIGRATE_ON_START", "perhaps", "bool"),
        ("DATABASE_URL", "localhost:5432/app", "postgresql://"),
        ("DATABASE_URL", "mysql://db.example.com/app", "postgresql://"),
        ("DATABASE_URL", "postgresql://db:notaport/app", "port"),
        ("SUPABASE_URL", "abcd.supabase.co", "https://"),
        ("REALTIME_BRIDGE_URL", "ftp://bridge", "http"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("HOST", "http://0.0.0.0", "address"),
        ("TABLE_ACCESS", "public.t=everyone", "owner"),
        ("ROW_SECURITY", "public.notes=policies", "rls"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)  # type: ignore[call-arg]
    (error,) = raised.value.errors()
    assert str(error["loc"][0]).upper() == variable
    assert value in str(raised.value)
    assert allowed in error["msg"]


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    assert Settings(_env_file=None).log_level == "DEBUG"  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgres://u:p%40ss@db.example.com/app?sslmode=require",
        "postgresql:///app?host=/var/run/postgresql",
    ],
)
def test_good_database_urls_pass(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert Settings(_env_file=None).database_url == url  # type: ignore[call-arg]

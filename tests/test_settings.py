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

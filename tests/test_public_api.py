"""The public API is what `realtime_bridge.__all__` says, each name documented."""

from __future__ import annotations

import inspect

import realtime_bridge


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(realtime_bridge).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(realtime_bridge.__all__)
    assert realtime_bridge.__all__ == sorted(realtime_bridge.__all__)


def test_every_public_name_has_a_docstring() -> None:
    for name in realtime_bridge.__all__:
        value = getattr(realtime_bridge, name)
        assert inspect.getdoc(value), f"{name} has no docstring"

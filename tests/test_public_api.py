"""The public API is what `realtime_bridge.__all__` says, each name documented."""

from __future__ import annotations

import inspect

import realtime_bridge
import realtime_bridge.client
import realtime_bridge_client
from realtime_bridge import auth, errors


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


def test_the_client_package_lists_exactly_its_public_names() -> None:
    public = {
        name
        for name, value in vars(realtime_bridge_client).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(realtime_bridge_client.__all__)
    for name in realtime_bridge_client.__all__:
        assert inspect.getdoc(getattr(realtime_bridge_client, name)), f"{name} has no docstring"


def test_realtime_bridge_client_still_imports_the_same_client() -> None:
    for name in realtime_bridge_client.__all__:
        assert getattr(realtime_bridge.client, name) is getattr(realtime_bridge_client, name)
    assert realtime_bridge.connect is realtime_bridge_client.connect
    # The client's errors are the server's, so either spelling catches them.
    assert issubclass(realtime_bridge_client.UnknownChannel, errors.UnknownChannel)
    assert issubclass(realtime_bridge_client.TokenExpired, auth.TokenExpired)
    assert issubclass(realtime_bridge_client.ClientError, errors.RealtimeBridgeError)

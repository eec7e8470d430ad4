"""Plugins: how a table's rows become a typed channel.

A plugin names the table(s) it types, the channel and event name clients
subscribe to, the pydantic model of the payload, how a row maps onto it,
which column names the row's owner, and whether the channel is public.

Plugins are found, when the app is created (never at import time), in:

* every ``*.py`` file of the configured plugin paths (``plugins/`` by
  default) that defines ``PLUGINS = [Plugin(...), ...]`` (rooms, channel
  families whose ownership a SQL predicate decides, are declared in the
  same list as ``Room(...)``: `realtime_bridge.rooms`);
* the ``realtime_bridge.plugins`` entry-point group of installed packages,
  each entry point resolving to a `Plugin`, a list of them, or a module
  with ``PLUGINS``.

The bundled trading channels are themselves plugins in ``plugins/trading.py``,
loaded the same way as yours.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from realtime_bridge.change import Change, Row
from realtime_bridge.errors import ConfigurationError, PayloadInvalid
from realtime_bridge.events import Event
from realtime_bridge.pgtypes import ColumnType, python_column_type
from realtime_bridge.rooms import Room

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "realtime_bridge.plugins"
TABLE_EVENT = "row_change"


@dataclass(frozen=True, slots=True)
class Plugin:
    """A typed channel fed by one or more tables (or only by broadcasts)."""

    channel: str
    event: str
    model: type[BaseModel]
    tables: tuple[str, ...] = ()
    owner_column: str | None = "user_id"
    public: bool = False
    id_column: str = "id"
    transform: Callable[[Row], Mapping[str, Any]] | None = None
    description: str = ""
    name: str = ""
    #: Every event name the channel carries (default: only `event`).
    events: tuple[str, ...] = ()
    #: Which of `events` a table change is, or None for no event on this channel
    #: (default: every change is `event`). Sees the change's old row too.
    event_of: Callable[[Change], str | None] | None = None
    # "owner": rows scoped by `owner_column` (the default); "rls": by the
    # tables' row-level security policies (see `realtime_bridge.row_security`).
    row_security: str = "owner"

    def __post_init__(self) -> None:
        if self.row_security not in ("owner", "rls"):
            raise ConfigurationError(
                f"plugin {self.channel!r}: row_security must be 'owner' or 'rls', "
                f"not {self.row_security!r}"
            )
        if not self.channel or "." in self.channel:
            raise ConfigurationError(
                f"plugin channel {self.channel!r} must be a non-empty name without dots "
                "(dotted names are reserved for table channels such as public.positions)"
            )
        object.__setattr__(self, "tables", tuple(qualify(t) for t in self.tables))
        if not self.name:
            object.__setattr__(self, "name", self.channel)
        if not self.events:
            object.__setattr__(self, "events", (self.event,))
        elif self.event not in self.events:
            raise ConfigurationError(
                f"plugin channel {self.channel!r}: its default event {self.event!r} "
                f"is not one of its events {list(self.events)}"
            )

    def event_name(self, change: Change) -> str | None:
        """The event `change` is on this channel, or None when it is none."""
        if self.event_of is None:
            return self.event
        name = self.event_of(change)
        if name is not None and name not in self.events:
            raise ValueError(
                f"event_of gave {name!r}, which is not one of the channel's events "
                f"{list(self.events)}"
            )
        return name

    def payload(self, row: Row) -> Row:
        """Map a row (or a published payload) onto the model, as JSON-ready data."""
        source = self.transform(row) if self.transform is not None else row
        return self.model.model_validate(source).model_dump(mode="json")

    def columns(self) -> set[str]:
        fields = set(self.model.model_fields)
        fields.update(self.model.model_computed_fields)
        return fields

    def column_types(self) -> dict[str, ColumnType]:
        """The payload's fields typed by their annotations (the tables' own types win)."""
        types = {
            name: python_column_type(info.annotation)
            for name, info in self.model.model_fields.items()
        }
        for name, computed in self.model.model_computed_fields.items():
            types[name] = python_column_type(computed.return_type)
        return types


def qualify(table: str) -> str:
    """`positions` → `public.positions`; already-qualified names stay."""
    table = table.strip()
    return table if "." in table else f"public.{table}"


class PluginRegistry:
    """The plugins of one app, indexed by channel and by table."""

    def __init__(self, plugins: Iterable[Plugin | Room] = ()) -> None:
        self.by_channel: dict[str, Plugin] = {}
        self.by_table: dict[str, list[Plugin]] = {}
        self.rooms: dict[str, Room] = {}
        self.errors: Counter[str] = Counter()
        for plugin in plugins:
            self.add(plugin)

    def add(self, plugin: Plugin | Room) -> None:
        if isinstance(plugin, Room):
            for prefix in self.rooms:
                if prefix.startswith(plugin.prefix) or plugin.prefix.startswith(prefix):
                    raise ConfigurationError(
                        f"rooms {prefix!r} and {plugin.prefix!r} have overlapping prefixes"
                    )
            self.rooms[plugin.prefix] = plugin
            return
        if plugin.channel in self.by_channel:
            raise ConfigurationError(f"two plugins declare channel {plugin.channel!r}")
        self.by_channel[plugin.channel] = plugin
        for table in plugin.tables:
            self.by_table.setdefault(table, []).append(plugin)

    def __iter__(self) -> Any:
        return iter(self.by_channel.values())

    def room_for(self, channel: str) -> tuple[Room, str | None] | None:
        """The room whose prefix `channel` starts with, and its id (None: malformed).

        A plugin's channel of the same name is that plugin's, never a room.
        """
        if channel in self.by_channel:
            return None
        for prefix, room in self.rooms.items():
            if channel.startswith(prefix):
                return room, room.room_id(channel)
        return None

    def validate_broadcast(self, channel: str, event: str | None, payload: Any) -> tuple[str, Row]:
        """Check a published payload against its channel's model; return (event, data)."""
        from realtime_bridge.errors import UnknownChannel

        plugin = self.by_channel.get(channel)
        if plugin is None:
            room = self.room_for(channel)
            if room is None or room[1] is None:
                raise UnknownChannel(f"no channel named {channel!r}", channel=channel)
            return self._validate_room_event(room[0], channel, event, payload)
        if not isinstance(payload, Mapping):
            raise PayloadInvalid("payload must be a JSON object")
        if event is not None and plugin.event_of is not None and event not in plugin.events:
            # A channel that declares its events carries only those.
            raise PayloadInvalid(
                f"channel {channel!r} has no event {event!r}; "
                f"its events are {', '.join(plugin.events)}",
                errors=[{"loc": ["event"], "msg": "unknown event", "type": "event"}],
            )
        try:
            data = plugin.model.model_validate(dict(payload)).model_dump(mode="json")
        except ValidationError as exc:
            raise PayloadInvalid(
                f"payload does not match {plugin.model.__name__}",
                errors=orjson_safe(exc.errors(include_url=False)),
            ) from exc
        return event or plugin.event, data

    @staticmethod
    def _validate_room_event(
        room: Room, channel: str, event: str | None, payload: Any
    ) -> tuple[str, Row]:
        """A published room event: one of the room's declared events, with its model."""
        if not isinstance(payload, Mapping):
            raise PayloadInvalid("payload must be a JSON object")
        model = room.events.get(event or "")
        if model is None:
            names = ", ".join(sorted(room.events)) or "none declared"
            raise PayloadInvalid(
                f"{channel} is a room of {room.name}: event must be one of {names}, not {event!r}"
            )
        try:
            data = model.model_validate(dict(payload)).model_dump(mode="json")
        except ValidationError as exc:
            raise PayloadInvalid(
                f"payload does not match {model.__name__}",
                errors=orjson_safe(exc.errors(include_url=False)),
            ) from exc
        return str(event), data

    def channels_for(self, change: Change) -> tuple[str, ...]:
        """The channels a change appears on (cheap: no payload is built)."""
        if change.operation == "BROADCAST":
            return (change.channel or "",)
        table = change.qualified_table or ""
        plugins = self.by_table.get(table)
        if not plugins:
            return (table,)
        return (table, *(p.channel for p in plugins))

    def event_for(self, change: Change, channel: str) -> Event | None:
        """The event of `change` on `channel`; None when there is none or a plugin fails."""
        timestamp = _iso(change.committed_at)
        if change.operation == "BROADCAST":
            return self._broadcast_event(change, timestamp)[0]
        table = change.qualified_table
        assert table is not None, "table changes always name their table"
        if channel == table:
            return _table_event(change, table, timestamp)
        plugin = self.by_channel.get(channel)
        if plugin is None:
            return None
        try:
            return _plugin_event(plugin, change, table, timestamp)
        except Exception:
            self.errors[plugin.name] += 1
            logger.exception(
                "plugin %s failed on %s seq %s; event skipped", plugin.name, table, change.seq
            )
            return None

    def events_for(self, change: Change) -> list[Event]:
        """Every event one change produces; a plugin that fails is counted and skipped."""
        timestamp = _iso(change.committed_at)
        if change.operation == "BROADCAST":
            return self._broadcast_event(change, timestamp)
        table = change.qualified_table
        assert table is not None, "table changes always name their table"
        events = [_table_event(change, table, timestamp)]
        for plugin in self.by_table.get(table, ()):
            try:
                event = _plugin_event(plugin, change, table, timestamp)
                if event is not None:
                    events.append(event)
            except Exception:
                self.errors[plugin.name] += 1
                logger.exception(
                    "plugin %s failed on %s seq %s; event skipped", plugin.name, table, change.seq
                )
        return events

    def _broadcast_event(self, change: Change, timestamp: str) -> list[Event]:
        channel = change.channel or ""
        plugin = self.by_channel.get(channel)
        data = change.record or {}
        owner_column = plugin.owner_column if plugin else None
        owner = data.get(owner_column) if owner_column else None
        return [
            Event(
                seq=change.seq,
                channel=channel,
                event=change.event or (plugin.event if plugin else "broadcast"),
                operation="BROADCAST",
                table=None,
                data=data,
                old=None,
                timestamp=timestamp,
                user_id=owner,
                record_id=data.get(plugin.id_column if plugin else "id"),
                view=data,
                owners=(owner,) if owner_column else (),
            )
        ]


def _plugin_event(plugin: Plugin, change: Change, table: str, timestamp: str) -> Event | None:
    name = plugin.event_name(change)
    if name is None:
        return None
    record, old_record = change.record, change.old_record
    data = plugin.payload(record) if record is not None else None
    old = plugin.payload(old_record) if old_record is not None else None
    current = record if record is not None else old_record
    assert current is not None
    owner_column = plugin.owner_column
    owners: tuple[Any, ...] = ()
    if owner_column is not None:
        owners = tuple(
            dict.fromkeys(r.get(owner_column) for r in (record, old_record) if r is not None)
        )
    return Event(
        seq=change.seq,
        channel=plugin.channel,
        event=name,
        operation=change.operation,
        table=table,
        data=data,
        old=old,
        timestamp=timestamp,
        user_id=current.get(owner_column) if owner_column else None,
        record_id=current.get(plugin.id_column),
        view={**data, **record} if data is not None and record is not None else None,
        old_view={**old, **old_record} if old is not None and old_record is not None else None,
        owners=owners,
        xid=change.xid,
    )


def _table_event(change: Change, table: str, timestamp: str) -> Event:
    current = change.record if change.record is not None else change.old_record or {}
    return Event(
        seq=change.seq,
        channel=table,
        event=TABLE_EVENT,
        operation=change.operation,
        table=table,
        data=change.record,
        old=change.old_record,
        timestamp=timestamp,
        user_id=current.get("user_id"),
        record_id=current.get("id"),
        view=change.record,
        old_view=change.old_record,
        xid=change.xid,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def orjson_safe(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to JSON-safe fields."""
    return [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def discover(paths: Iterable[Path], *, use_entry_points: bool = True) -> PluginRegistry:
    """Build a registry from plugin files and installed entry points."""
    registry = PluginRegistry()
    for path in paths:
        for module_path in _plugin_files(path):
            for plugin in _plugins_of(_import_file(module_path), str(module_path)):
                registry.add(plugin)
    if use_entry_points:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = entry.load()
            except Exception as exc:
                raise ConfigurationError(
                    f"plugin entry point {entry.name!r} failed to load: {exc}"
                ) from exc
            for plugin in _plugins_of(loaded, f"entry point {entry.name}"):
                registry.add(plugin)
    return registry


def _plugin_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    logger.info("plugin path %s does not exist; skipped", path)
    return []


def _import_file(path: Path) -> Any:
    name = f"realtime_bridge_plugins.{path.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigurationError(f"plugin file {path} failed to import: {exc}") from exc
    return module


def _plugins_of(obj: Any, origin: str) -> list[Plugin | Room]:
    if isinstance(obj, Plugin | Room):
        return [obj]
    found = getattr(obj, "PLUGINS", obj)
    if callable(found) and not isinstance(found, type):
        found = found()
    if isinstance(found, Plugin | Room):
        return [found]
    if isinstance(found, list | tuple) and all(isinstance(p, Plugin | Room) for p in found):
        return list(found)
    raise ConfigurationError(f"{origin} defines no PLUGINS list of realtime_bridge.Plugin")

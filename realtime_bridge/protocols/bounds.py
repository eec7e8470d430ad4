"""Bounds on the shape of inbound JSON, checked where a frame or body is parsed.

Size alone does not make JSON safe: 64 KiB of ``[`` nests 32,000 levels deep,
and orjson, which parses up to 1,024 levels, refuses to encode more than 255,
so a deep value that was accepted would fail later, when it is echoed, stored
or sent on. Every protocol therefore parses client JSON with `loads`, which
refuses, with the protocol's error and before anything else sees it:

* nesting of arrays and objects more than `MAX_DEPTH` levels deep (``too_deep``);
* an array or object with more than `MAX_ITEMS` entries, or an object key
  longer than `MAX_KEY_CHARS` characters (``too_long``).

The limits leave room under orjson's 255 for the envelopes a payload is
wrapped in on the way out (presence diffs, broadcasts, stored events).
"""

from __future__ import annotations

from typing import Any

import orjson

from realtime_bridge.errors import BadMessage, TooDeep, TooLong

MAX_DEPTH = 64
MAX_ITEMS = 10_000
MAX_KEY_CHARS = 256


def check(value: Any, what: str = "message") -> None:
    """Raise `TooDeep` or `TooLong` when decoded JSON `value` is out of bounds."""
    # Iterative, so the check itself has no recursion limit to hit.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TooDeep(f"{what} nests arrays and objects more than {MAX_DEPTH} levels deep")
        if len(item) > MAX_ITEMS:
            raise TooLong(f"{what} has an array or object of more than {MAX_ITEMS} entries")
        if isinstance(item, dict):
            for key in item:
                if len(key) > MAX_KEY_CHARS:
                    raise TooLong(f"{what} has a key longer than {MAX_KEY_CHARS} characters")
            children = item.values()
        else:
            children = item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def loads(data: str | bytes, what: str = "message") -> Any:
    """Parse client JSON; `BadMessage` if it is not JSON, `TooDeep`/`TooLong` if out of bounds."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"{what} is not valid JSON: {exc}") from exc
    if isinstance(value, dict | list):
        check(value, what)
    return value

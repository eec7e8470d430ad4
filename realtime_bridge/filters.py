"""Subscription filters: the grammar both ends of the protocol parse.

Defined in `realtime_bridge_client.filters` (the client checks and spells
filters with the same code the bridge matches them with); re-exported here
for the server's modules.
"""

from realtime_bridge_client.filters import (
    IS_VALUES,
    MAX_CONDITIONS,
    MAX_IN_VALUES,
    OPERATORS,
    Condition,
    Filter,
    Op,
    canonical,
    parse_filter,
)

__all__ = [
    "IS_VALUES",
    "MAX_CONDITIONS",
    "MAX_IN_VALUES",
    "OPERATORS",
    "Condition",
    "Filter",
    "Op",
    "canonical",
    "parse_filter",
]

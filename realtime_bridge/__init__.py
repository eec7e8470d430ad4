"""realtime-bridge: Postgres row changes pushed to clients in real time.

The public API is exactly what `__all__` lists.
"""

from realtime_bridge.app import create_app
from realtime_bridge.bridge import Bridge
from realtime_bridge.broadcasts import (
    broadcast_bot_created,
    broadcast_bot_deleted,
    broadcast_bot_updated,
    broadcast_log_created,
    broadcast_order_filled,
    broadcast_order_update,
    broadcast_pnl_update,
)
from realtime_bridge.change import Change
from realtime_bridge.client import connect
from realtime_bridge.errors import (
    ClientError,
    ConfigurationError,
    MigrationError,
    PublishError,
    RealtimeBridgeError,
)
from realtime_bridge.plugins import Plugin, PluginRegistry
from realtime_bridge.publish import (
    broadcast,
    broadcast_portfolio_update,
    broadcast_position_update,
    broadcast_trade_update,
    publish_prices,
)
from realtime_bridge.rooms import Room
from realtime_bridge.settings import Settings

__all__ = [
    "Bridge",
    "Change",
    "ClientError",
    "ConfigurationError",
    "MigrationError",
    "Plugin",
    "PluginRegistry",
    "PublishError",
    "RealtimeBridgeError",
    "Room",
    "Settings",
    "broadcast",
    "broadcast_bot_created",
    "broadcast_bot_deleted",
    "broadcast_bot_updated",
    "broadcast_log_created",
    "broadcast_order_filled",
    "broadcast_order_update",
    "broadcast_pnl_update",
    "broadcast_portfolio_update",
    "broadcast_position_update",
    "broadcast_trade_update",
    "connect",
    "create_app",
    "publish_prices",
]

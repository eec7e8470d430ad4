"""How uvicorn serves the app: one configuration for `serve` and for tests.

Forwarded headers are believed only from `TRUSTED_PROXIES`: uvicorn on its
own trusts `X-Forwarded-For` from 127.0.0.1 (or `FORWARDED_ALLOW_IPS`),
which would let any local client pick its address, and so its per-address
connection budget.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from realtime_bridge.settings import Settings


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's config for `app` under `settings` (`overrides` win, e.g. port=0 in tests)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "ws_max_size": max(settings.max_frame_bytes * 4, 1024 * 1024),
        "ws_per_message_deflate": False,
        "proxy_headers": bool(settings.trusted_proxies),
        # A list, never None: None would make uvicorn read FORWARDED_ALLOW_IPS itself.
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)

"""`realtime-bridge`: serve, migrate, keys, types."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from realtime_bridge.errors import RealtimeBridgeError
from realtime_bridge.settings import Settings


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid configuration:\n" + "\n".join(lines)) from None


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from realtime_bridge.app import create_app
    from realtime_bridge.server import BridgeServer

    settings = _settings(host=args.host, port=args.port)
    if (
        settings.enable_testing_api
        and not settings.allow_testing_api_public
        and settings.host not in ("127.0.0.1", "localhost", "::1")
    ):
        raise SystemExit(
            "realtime-bridge: ENABLE_TESTING_API=true on a public address "
            f"({settings.host}) lets anyone with the service key write demo trades; "
            "set ALLOW_TESTING_API_PUBLIC=true if you really mean it"
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ws_max_size=max(settings.max_frame_bytes * 4, 1024 * 1024),
        ws_per_message_deflate=False,
        proxy_headers=True,
        lifespan="on",
    )
    server = BridgeServer(config, app.state.bridge)
    # SIGTERM is how every deploy stops us: once uvicorn has shut down
    # gracefully it raises the signal again, and this handler makes that a
    # clean exit (0) instead of death by signal.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    server.run()
    if not server.started:
        raise SystemExit(3)  # what uvicorn.run does when start-up fails


def migrate_command(args: argparse.Namespace) -> None:
    from realtime_bridge.embedded import EmbeddedPostgres
    from realtime_bridge.migrate import migrate

    settings = _settings()
    dsn = settings.database_url or EmbeddedPostgres(settings.data_dir).start()
    applied = asyncio.run(migrate(dsn, settings.migrations_dir))
    print(
        f"applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else "; up to date")
    )


def keys_command(args: argparse.Namespace) -> None:
    from realtime_bridge.auth import Authenticator, load_or_create_secret, project_keys

    settings = _settings()
    secret = settings.supabase_jwt_secret or load_or_create_secret(settings.data_dir)
    keys = project_keys(Authenticator(secret))
    print(f"SUPABASE_ANON_KEY={keys['anon']}")
    print(f"SUPABASE_SERVICE_KEY={keys['service_role']}")


def types_command(args: argparse.Namespace) -> None:
    from pathlib import Path

    from realtime_bridge.plugins import discover
    from realtime_bridge.typegen import json_schema_text, typescript

    registry = discover(_settings().plugin_paths)
    text = typescript(registry) if args.typescript else json_schema_text(registry)
    if args.out is None:
        sys.stdout.write(text)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="realtime-bridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the service")
    serve_parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1, HOST)")
    serve_parser.add_argument("--port", type=int, default=None, help="port (default 8000, PORT)")
    serve_parser.set_defaults(func=serve)
    migrate_parser = commands.add_parser("migrate", help="apply pending SQL migrations")
    migrate_parser.set_defaults(func=migrate_command)
    keys_parser = commands.add_parser(
        "keys", help="print an anon key and a service key made from the JWT secret"
    )
    keys_parser.set_defaults(func=keys_command)
    types_parser = commands.add_parser(
        "types", help="write the channels' payload types (TypeScript or JSON Schema)"
    )
    kind = types_parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--typescript", action="store_true", help="TypeScript declarations")
    kind.add_argument("--json-schema", action="store_true", help="the JSON Schema")
    types_parser.add_argument("--out", default=None, help="write to FILE (default: stdout)")
    types_parser.set_defaults(func=types_command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except RealtimeBridgeError as exc:
        raise SystemExit(f"realtime-bridge: {exc}") from None

"""`realtime-bridge`: serve, demo, migrate, keys, types."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from realtime_bridge.errors import RealtimeBridgeError
from realtime_bridge.redact import install as install_redaction
from realtime_bridge.redact import redact
from realtime_bridge.settings import SECRET_SETTINGS, Settings


def _fail(*lines: str) -> NoReturn:
    """Exit 2 with one line per problem on stderr (no traceback)."""
    for line in lines:
        print(f"realtime-bridge: {line}", file=sys.stderr)
    sys.exit(2)


def _shown(field: str, value: object) -> str:
    if field in SECRET_SETTINGS:
        return "<hidden>"
    return redact(value if isinstance(value, str) else repr(value))


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = ".".join(map(str, error["loc"])).upper() or "configuration"
            value = f"={_shown(field, error['input'])}" if field else ""
            lines.append(f"invalid {name}{value}: {error['msg']}")
        _fail(*lines)


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with keys and tokens masked on every handler (access log included)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": "realtime_bridge.redact.RedactingFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    return config


def _embedded(settings: Settings) -> bool:
    """No DATABASE_URL and not hosted Supabase: the bridge starts Postgres in DATA_DIR."""
    hosted = settings.supabase_url and settings.supabase_service_key
    return not settings.database_url and not hosted


def serve(args: argparse.Namespace) -> None:

    from realtime_bridge import preflight
    from realtime_bridge.app import create_app
    from realtime_bridge.server import BridgeServer, server_config

    settings = _settings(host=args.host, port=args.port, demo=getattr(args, "demo", None))
    if (
        settings.enable_testing_api
        and not settings.allow_testing_api_public
        and settings.host not in ("127.0.0.1", "localhost", "::1")
    ):
        _fail(
            "ENABLE_TESTING_API=true on a public address "
            f"({settings.host}) lets anyone with the service key write demo trades; "
            "set ALLOW_TESTING_API_PUBLIC=true if you really mean it"
        )
    # Before anything is announced: one serve per embedded folder, the port
    # is free (and now ours), the database answers.
    try:
        lock = preflight.claim_data_dir(settings.data_dir) if _embedded(settings) else None
        sock = preflight.bind(settings.host, settings.port)
        if settings.database_url:
            asyncio.run(preflight.check_database(settings.database_url))
    except preflight.PreflightError as exc:
        _fail(str(exc))
    if lock is not None:
        lock.record(sock.getsockname()[1])
    # After the checks, whose failure is one line on its own.
    preflight.raise_open_file_limit()
    if settings.demo:
        _announce_demo(settings, sock.getsockname()[1])
    app = create_app(settings)
    config = server_config(app, settings, port=sock.getsockname()[1], log_config=_log_config())
    server = BridgeServer(config, app.state.bridge)
    # SIGTERM is how every deploy stops us: once uvicorn has shut down
    # gracefully it raises the signal again, and this handler makes that a
    # clean exit (0) instead of death by signal.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        if lock is not None:
            lock.release()
    if not server.started:
        sys.exit(3)  # uvicorn's "startup failed" code; the reason is logged above


def _announce_demo(settings: Settings, port: int) -> None:
    """Where to watch the demo, on stdout (like `keys`: never in the logs)."""
    from realtime_bridge.auth import Authenticator, Role, load_or_create_secret, project_keys
    from realtime_bridge.demo import DEMO_USER

    secret = settings.supabase_jwt_secret or load_or_create_secret(settings.data_dir)
    auth = Authenticator(secret)
    anon = project_keys(auth)["anon"]
    token = auth.make_token(Role.AUTHENTICATED, sub=DEMO_USER, ttl=24 * 3600)
    url = f"http://{settings.host}:{port}"
    print(
        f"realtime-bridge demo: the inspector is at {url}/\n"
        "  the example dashboard (make example; then serve examples/react-dashboard/dist, e.g.\n"
        "  python -m http.server -d examples/react-dashboard/dist 5173) with this query:\n"
        f"  ?url={url}&apikey={anon}&token={token}",
        flush=True,
    )


def demo_command(args: argparse.Namespace) -> None:
    """`serve` with DEMO=1: the scripted trading demo on the embedded Postgres."""
    args.demo = True
    serve(args)


def migrate_command(args: argparse.Namespace) -> None:
    from realtime_bridge import preflight
    from realtime_bridge.embedded import EmbeddedPostgres
    from realtime_bridge.migrate import migrate

    settings = _settings()
    if settings.database_url:
        try:
            asyncio.run(preflight.check_database(settings.database_url))
        except preflight.PreflightError as exc:
            _fail(str(exc))
    dsn = settings.database_url or EmbeddedPostgres(settings.data_dir).start()
    # The demo schema: --demo or DEMO_SCHEMA, else only in the embedded database.
    demo = args.demo or (
        settings.demo_schema if settings.demo_schema is not None else not settings.database_url
    )
    applied = asyncio.run(migrate(dsn, settings.migrations_dir, demo=demo))
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
    if args.python:
        from realtime_bridge import publish
        from realtime_bridge.typegen_python import python_broadcasts

        hand_written = [name for name in vars(publish) if name.startswith("broadcast_")]
        text = python_broadcasts(registry, skip=hand_written)
    else:
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
    demo_parser = commands.add_parser(
        "demo",
        help="serve with the scripted trading demo (embedded Postgres only; DEMO=1)",
    )
    demo_parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    demo_parser.add_argument("--port", type=int, default=None, help="port (default 8000)")
    demo_parser.set_defaults(func=demo_command)
    migrate_parser = commands.add_parser("migrate", help="apply pending SQL migrations")
    migrate_parser.add_argument(
        "--demo",
        action="store_true",
        help="also create the demo trading tables (supabase/demo; DEMO_SCHEMA=true)",
    )
    migrate_parser.set_defaults(func=migrate_command)
    keys_parser = commands.add_parser(
        "keys", help="print an anon key and a service key made from the JWT secret"
    )
    keys_parser.set_defaults(func=keys_command)
    types_parser = commands.add_parser(
        "types",
        help="write the channels' payload types (TypeScript, JSON Schema or Python helpers)",
    )
    kind = types_parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--typescript", action="store_true", help="TypeScript declarations")
    kind.add_argument("--json-schema", action="store_true", help="the JSON Schema")
    kind.add_argument(
        "--python", action="store_true", help="typed broadcast_<event>() helpers (a module)"
    )
    types_parser.add_argument("--out", default=None, help="write to FILE (default: stdout)")
    types_parser.set_defaults(func=types_command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_redaction()
    try:
        args.func(args)
    except RealtimeBridgeError as exc:
        raise SystemExit(f"realtime-bridge: {exc}") from None

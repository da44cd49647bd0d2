"""The `geoservice` command: `serve`, and operator tasks such as `zones import`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from geoservice import __version__
from geoservice.embedded_redis import EmbeddedRedisError
from geoservice.settings import ENV_VARS, SettingsError, settings_from_env, validate_redis_url


def _parser() -> argparse.ArgumentParser:
    epilog = "environment (flags override):\n" + "\n".join(
        f"  {name:<34} {text}" for name, text in ENV_VARS.items()
    )
    parser = argparse.ArgumentParser(
        prog="geoservice",
        description="Real-time geofenced offers for retail.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geoservice {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080; 0 picks a free one)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    serve.add_argument("--redis-url", help="overrides REDIS_URL")
    serve.add_argument(
        "--demo", action="store_true", help="load the demo tenant and the example zones"
    )
    zones = commands.add_parser("zones", help="zone files")
    zone_commands = zones.add_subparsers(dest="zones_command", metavar="ZONES_COMMAND")
    zone_import = zone_commands.add_parser(
        "import",
        help="validate a GeoJSON FeatureCollection and write it into a tenant's zones",
        description="Writes straight to Redis (REDIS_URL or --redis-url), all Features or none; "
        "running instances pick the zones up through the change feed.",
    )
    zone_import.add_argument("file", type=Path, help="a GeoJSON FeatureCollection")
    zone_import.add_argument("--tenant", required=True, help="tenant id")
    zone_import.add_argument("--redis-url", help="overrides REDIS_URL")
    return parser


async def _import_zones(redis_url: str, tenant_id: str, path: Path) -> str:
    from geoservice.demo import import_zone_file
    from geoservice.settings import Settings
    from geoservice.store import Store

    store = Store.open(Settings(redis_url=redis_url))
    try:
        created, updated = await import_zone_file(store, tenant_id, path)
    finally:
        await store.close()
    return f"geoservice: {path}: {created} zones created, {updated} replaced in {tenant_id!r}"


def main(argv: Sequence[str] | None = None) -> int:
    # The index's batch path does small matrix products: BLAS threads would only compete with
    # the event loop. Set before numpy is first imported (the app is imported lazily below).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "zones":
        return _zones_command(args, parser)
    try:
        settings = settings_from_env()
        if args.command == "serve":
            if args.port is not None and not 0 <= args.port <= 65535:
                raise SettingsError(f"--port {args.port} is out of range (0..65535)")
            if args.workers is not None and not 1 <= args.workers <= 256:
                raise SettingsError(f"--workers {args.workers} is out of range (1..256)")
            if args.redis_url is not None:
                validate_redis_url(args.redis_url)
            settings = settings.with_overrides(
                host=args.host, port=args.port, workers=args.workers, redis_url=args.redis_url
            )
            from geoservice.server import serve

            return serve(settings, demo=args.demo)
    except (SettingsError, EmbeddedRedisError) as exc:
        print(f"geoservice: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


def _zones_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from geoservice.demo import ImportFileError
    from geoservice.errors import NotFound

    if args.zones_command != "import":
        parser.parse_args(["zones", "--help"])
        return 2
    redis_url = args.redis_url or os.environ.get("REDIS_URL")
    try:
        if not redis_url:
            raise SettingsError("zones import needs REDIS_URL or --redis-url")
        validate_redis_url(redis_url)
        print(asyncio.run(_import_zones(redis_url, args.tenant, args.file)))
    except (SettingsError, ImportFileError, NotFound, RedisError, OSError) as exc:
        message = exc.detail if isinstance(exc, NotFound) else str(exc)
        print(f"geoservice: {message}", file=sys.stderr)
        return 2
    return 0

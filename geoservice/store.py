"""The Redis connection: one client per process, standalone or cluster, and the Lua scripts.

Scripts live as `.lua` files beside this module; they are registered once and called by SHA
(redis-py falls back to EVAL/SCRIPT LOAD when a server restarted empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from geoservice.settings import Settings

# redis-py's annotations cannot know that replies are bytes (decode_responses=False) and type
# every reply as bytes | str; the service treats the client as untyped and decodes at each use.
RedisClient = Any

SCRIPT_NAMES = (
    "create_tenant",
    "fence",
    "issue_offer",
    "reserve_budget",
    "redeem",
    "rate_limit",
)


def load_script_source(name: str) -> str:
    return (files("geoservice") / "lua" / f"{name}.lua").read_text()


def connect(settings: Settings, url: str | None = None) -> Redis | RedisCluster:
    url = url or settings.redis_url
    if url is None:
        raise ValueError("no Redis URL: the embedded Redis must be started first")
    timeout_s = settings.redis_timeout_ms / 1000
    parts = urlsplit(url)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        nodes = []
        for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = hostport.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        return RedisCluster(
            startup_nodes=nodes,
            password=parts.password,
            ssl=parts.scheme == "rediss+cluster",
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=False,
        )
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        health_check_interval=30,
    )


@dataclass
class Store:
    """The process's Redis client and its registered scripts."""

    redis: RedisClient
    scripts: dict[str, AsyncScript] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, url: str | None = None) -> Store:
        redis = connect(settings, url)
        store = cls(redis)
        for name in SCRIPT_NAMES:
            store.scripts[name] = redis.register_script(load_script_source(name))
        return store

    async def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self.scripts[name](keys=keys, args=args)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()

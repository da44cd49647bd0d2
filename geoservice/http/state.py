"""Typed keys for everything the application holds; declared in one place."""

from __future__ import annotations

import asyncio

from aiohttp import web

from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tenants import Tenants

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
TENANTS = web.AppKey("tenants", Tenants)
READY = web.AppKey("ready", asyncio.Event)
BACKGROUND = web.AppKey("background", list[asyncio.Task[None]])
OPENAPI = web.AppKey("openapi", bytes)

"""Typed keys for everything the application holds; declared in one place."""

from __future__ import annotations

import asyncio

from aiohttp import web

from geoservice.customers import Customers
from geoservice.offers import Offers
from geoservice.pings import Pings
from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tenants import Tenants
from geoservice.webhooks import Webhooks
from geoservice.zones import Zones

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
TENANTS = web.AppKey("tenants", Tenants)
ZONES = web.AppKey("zones", Zones)
PINGS = web.AppKey("pings", Pings)
OFFERS = web.AppKey("offers", Offers)
CUSTOMERS = web.AppKey("customers", Customers)
READY = web.AppKey("ready", asyncio.Event)
BACKGROUND = web.AppKey("background", list[asyncio.Task[None]])
OPENAPI = web.AppKey("openapi", bytes)
WEBHOOKS = web.AppKey("webhooks", Webhooks)

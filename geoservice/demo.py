"""The demo data `make run` starts with: a tenant with well-known keys, the example zones."""

from __future__ import annotations

from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tenants import Tenants

DEMO_TENANT = "demo"
DEMO_SECRET_KEY = "sk_demo_local_only_0000000000000000000000000"
DEMO_SDK_KEY = "pk_demo_local_only_0000000000000000000000000"


async def seed_demo(settings: Settings) -> list[str]:
    """Create the demo tenant (idempotent); returns lines to show the user."""
    store = Store.open(settings)
    try:
        tenants = Tenants(store)
        existing = await tenants.list_ids()
        if DEMO_TENANT not in existing:
            await tenants.create(
                DEMO_TENANT,
                "Demo Delikatessen AG",
                "Europe/Zurich",
                secret_key=DEMO_SECRET_KEY,
                sdk_key=DEMO_SDK_KEY,
            )
    finally:
        await store.close()
    return [
        f"geoservice: demo tenant {DEMO_TENANT!r}",
        f"geoservice:   secret key (back office): {DEMO_SECRET_KEY}",
        f"geoservice:   SDK key (pings):          {DEMO_SDK_KEY}",
    ]

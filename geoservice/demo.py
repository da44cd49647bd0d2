"""The demo data `make run` starts with: a tenant with well-known keys and the example zones."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson

from geoservice.customers import Customers, Interest
from geoservice.errors import ValidationFailed
from geoservice.http.zones import check_import
from geoservice.offers import Offer, OfferCatalog, Offers
from geoservice.settings import Settings
from geoservice.store import Store
from geoservice.tenants import Tenants
from geoservice.zones import ZoneDirectory, Zones

DEMO_TENANT = "demo"
DEMO_SECRET_KEY = "sk_demo_local_only_0000000000000000000000000"
DEMO_SDK_KEY = "pk_demo_local_only_0000000000000000000000000"
# Beside the source tree by default; an installed package (the container image) names the file.
EXAMPLE_ZONES = Path(
    os.environ.get("GEOSERVICE_DEMO_ZONES")
    or Path(__file__).resolve().parent.parent / "zones" / "switzerland.geojson"
)


class ImportFileError(ValueError):
    """A zone file that cannot be imported; the message is one line for the operator."""


async def import_zone_file(store: Store, tenant_id: str, path: Path) -> tuple[int, int]:
    """Validate every Feature of a GeoJSON file, then write them all at once (all or nothing)."""
    from geoservice.http.zones import MAX_IMPORT_FEATURES

    await Tenants(store).get(tenant_id)  # NotFound for an unknown tenant
    try:
        collection = orjson.loads(await asyncio.to_thread(path.read_bytes))
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ImportFileError(f"{path}: {exc}") from None
    features = collection.get("features") if isinstance(collection, dict) else None
    if not isinstance(features, list):
        raise ImportFileError(f"{path}: not a GeoJSON FeatureCollection")
    zones = Zones(store, ZoneDirectory())
    created = updated = 0
    try:
        # Files may be larger than one API import; each chunk is all-or-nothing on its own,
        # so validate the whole file first.
        items = await asyncio.to_thread(check_import, features)
    except ValidationFailed as exc:
        first = exc.errors[0] if exc.errors else None
        where = f" (first: {first.field}: {first.message})" if first else ""
        raise ImportFileError(f"{path}: {exc.detail}{where}") from None
    for start in range(0, len(items), MAX_IMPORT_FEATURES):
        c, u = await zones.put_many(tenant_id, items[start : start + MAX_IMPORT_FEATURES])
        created, updated = created + c, updated + u
    return created, updated


# Open around the clock, so the README's walk gets an offer at any hour.
DEMO_KIOSK = {
    "type": "Feature",
    "id": "zrh-hb-kiosk",
    "geometry": {"type": "Point", "coordinates": [8.5403, 47.3779]},
    "properties": {"name": "Sapori Kiosk Hauptbahnhof", "store_id": "CH-ZRH-K01", "radius_m": 60},
}
DEMO_OFFERS = [
    Offer(
        "truffle-slicer-10",
        title="10 % on the truffle slicer",
        body="In this store, for the next two hours.",
        product_ids=("p-881",),
        categories=("kitchen",),
        valid_for_s=7200,
    ),
    Offer(
        "espresso-cups-2for1",
        title="Two espresso cups for one",
        product_ids=("p-120",),
        categories=("coffee",),
    ),
    Offer(
        "welcome-espresso",
        title="A free espresso with any purchase",
        fallback=True,
        max_per_customer=3,
    ),
]
DEMO_CUSTOMER = "c-1001"
HOUR_MS = 3_600_000


async def _seed_offers_and_customer(store: Store) -> None:
    offers = Offers(store, OfferCatalog())
    for offer in DEMO_OFFERS:
        await offers.put(DEMO_TENANT, offer)
    customers = Customers(store)
    now_ms = int(time.time() * 1000)
    await customers.add_interests(
        DEMO_TENANT,
        [
            (
                DEMO_CUSTOMER,
                Interest("newsletter_click", "p-881", ("kitchen",), now_ms - 48 * HOUR_MS),
            ),
            (DEMO_CUSTOMER, Interest("view", "p-120", ("coffee",), now_ms - HOUR_MS)),
        ],
        lookback_s=2_419_200,
    )
    await customers.record_consent(
        DEMO_TENANT, DEMO_CUSTOMER, location=True, marketing=True, source="demo"
    )


async def seed_demo(settings: Settings) -> list[str]:
    """Create the demo tenant and its zones (idempotent); returns lines to show the user."""
    store = Store.open(settings)
    lines = [f"geoservice: demo tenant {DEMO_TENANT!r}"]
    try:
        tenants = Tenants(store)
        if DEMO_TENANT not in await tenants.list_ids():
            await tenants.create(
                DEMO_TENANT,
                "Sapori Delikatessen AG",
                "Europe/Zurich",
                secret_key=DEMO_SECRET_KEY,
                sdk_key=DEMO_SDK_KEY,
            )
        if await asyncio.to_thread(EXAMPLE_ZONES.exists):
            created, updated = await import_zone_file(store, DEMO_TENANT, EXAMPLE_ZONES)
            lines.append(f"geoservice:   {created + updated} zones from {EXAMPLE_ZONES.name}")
        else:
            lines.append("geoservice:   no example zones next to this install")
        kiosk = check_import([DEMO_KIOSK])
        await Zones(store, ZoneDirectory()).put_many(DEMO_TENANT, kiosk)
        await _seed_offers_and_customer(store)
        lines.append(
            f"geoservice:   {len(DEMO_OFFERS)} offers; customer {DEMO_CUSTOMER!r} "
            "with a newsletter click on p-881 and consent"
        )
    finally:
        await store.close()
    lines += [
        f"geoservice:   secret key (back office): {DEMO_SECRET_KEY}",
        f"geoservice:   SDK key (pings):          {DEMO_SDK_KEY}",
    ]
    return lines

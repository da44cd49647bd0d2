"""The zones API: every status, tenant isolation, the all-or-nothing import, the change feed."""

from __future__ import annotations

import asyncio
import io
import math

import orjson
import pytest
from redis.asyncio import Redis

from geoservice.http.state import ZONES
from tests.conftest import AppClientFactory, TenantFactory
from tests.redis_state import state_of

ZRH = (8.5392, 47.3717)  # lon, lat


def circle(zone_id: str, lon: float = ZRH[0], lat: float = ZRH[1], radius_m: float = 100.0):
    return {
        "type": "Feature",
        "id": zone_id,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {"name": f"Store {zone_id}", "store_id": "s-1", "radius_m": radius_m},
    }


def square(zone_id: str, lon: float, lat: float, side_deg: float = 0.01):
    ring = [
        [lon, lat],
        [lon + side_deg, lat],
        [lon + side_deg, lat + side_deg],
        [lon, lat + side_deg],
        [lon, lat],
    ]
    return {
        "type": "Feature",
        "id": zone_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"name": f"Mall {zone_id}"},
    }


async def snapshot(redis: Redis) -> dict[bytes, object]:
    """Every key and value of our test Redis except the change feed."""
    return await state_of(redis, lambda key: key != b"geo:changes")


async def test_put_creates_then_replaces_with_computed_area(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.put("/v1/zones/z1", json=circle("z1"), headers=keys.secret)
    assert response.status == 201, await response.text()
    stored = await response.json()
    assert stored["id"] == "z1"
    assert stored["geometry"] == {"type": "Point", "coordinates": list(ZRH)}
    props = stored["properties"]
    assert props["area_m2"] == pytest.approx(math.pi * 100.0**2, rel=1e-3)
    assert props["timezone"] == "Europe/Zurich"  # looked up from the location
    assert props["dwell_s"] == 300
    assert props["enabled"] is True
    response = await client.put(
        "/v1/zones/z1", json=circle("z1", radius_m=200.0), headers=keys.secret
    )
    assert response.status == 200
    fetched = await (await client.get("/v1/zones/z1", headers=keys.secret)).json()
    assert fetched["properties"]["radius_m"] == 200.0
    assert fetched["properties"]["area_m2"] == pytest.approx(math.pi * 200.0**2, rel=1e-3)


async def test_get_round_trip_can_be_put_back(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    feature = square("mall", 8.50, 47.36)
    feature["properties"]["opening_hours"] = {
        "sat": [["09:00", "17:00"]],
        "mon": [["08:00", "20:00"]],
    }
    await client.put("/v1/zones/mall", json=feature, headers=keys.secret)
    fetched = await (await client.get("/v1/zones/mall", headers=keys.secret)).json()
    assert list(fetched["properties"]["opening_hours"]) == ["mon", "sat"]
    response = await client.put("/v1/zones/mall", json=fetched, headers=keys.secret)
    assert response.status == 200, await response.text()


async def test_delete_then_404(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    await client.put("/v1/zones/z1", json=circle("z1"), headers=keys.secret)
    assert (await client.delete("/v1/zones/z1", headers=keys.secret)).status == 204
    assert (await client.get("/v1/zones/z1", headers=keys.secret)).status == 404
    assert (await client.delete("/v1/zones/z1", headers=keys.secret)).status == 404


async def test_list_pages_by_id(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    for i in range(5):
        await client.put(f"/v1/zones/z{i}", json=circle(f"z{i}"), headers=keys.secret)
    seen, cursor = [], None
    for _ in range(5):
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/v1/zones", params=query, headers=keys.secret)).json()
        assert page["type"] == "FeatureCollection"
        seen += [f["id"] for f in page["features"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["z0", "z1", "z2", "z3", "z4"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"limit": "0"}, 422),
        ({"limit": "1001"}, 422),
        ({"limit": "x"}, 422),
        ({"cursor": "%%%"}, 422),
    ],
)
async def test_list_rejects_bad_paging(client, make_tenant: TenantFactory, query, status):
    keys = await make_tenant()
    response = await client.get("/v1/zones", params=query, headers=keys.secret)
    assert response.status == status


async def test_another_tenants_zone_is_404_and_unchanged(
    client, make_tenant: TenantFactory, redis: Redis
):
    a = await make_tenant("tenant-a")
    b = await make_tenant("tenant-b")
    await client.put("/v1/zones/shared-id", json=circle("shared-id"), headers=a.secret)
    before = await snapshot(redis)
    assert (await client.get("/v1/zones/shared-id", headers=b.secret)).status == 404
    assert (await client.delete("/v1/zones/shared-id", headers=b.secret)).status == 404
    page = await (await client.get("/v1/zones", headers=b.secret)).json()
    assert page["features"] == []
    assert await snapshot(redis) == before
    # B may use the same id for a zone of its own; A's stays as it was.
    await client.put("/v1/zones/shared-id", json=circle("shared-id", radius_m=50), headers=b.secret)
    mine = await (await client.get("/v1/zones/shared-id", headers=a.secret)).json()
    assert mine["properties"]["radius_m"] == 100.0


async def test_sdk_key_cannot_touch_zones(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    assert (await client.put("/v1/zones/z1", json=circle("z1"), headers=keys.sdk)).status == 403
    assert (await client.get("/v1/zones", headers=keys.sdk)).status == 403


def bowtie():
    feature = square("bow", 8.5, 47.3)
    feature["geometry"]["coordinates"] = [
        [[8.5, 47.3], [8.51, 47.31], [8.51, 47.3], [8.5, 47.31], [8.5, 47.3]]
    ]
    return feature


@pytest.mark.parametrize(
    ("feature", "fields", "needle"),
    [
        (bowtie(), ["geometry.coordinates"], "Self-intersection"),
        (circle("bow", radius_m=5), ["properties.radius_m"], "10"),
        (circle("bow", radius_m=50_001), ["properties.radius_m"], "50000"),
        (circle("bow", lon=181), ["geometry.coordinates"], "180"),
        ({**circle("bow"), "colour": "red"}, ["colour"], "Extra"),
        ({**circle("bow"), "type": "Point"}, ["type"], "Feature"),
        ({**circle("bow"), "id": "other"}, ["id"], "differs"),
        (
            {**circle("bow"), "properties": {"radius_m": 50, "dwell_s": -1, "timezone": "X/Y"}},
            ["properties.name", "properties.dwell_s", "properties.timezone"],
            "",
        ),
        (
            {
                **square("bow", 8.5, 47.3),
                "properties": {
                    "name": "x",
                    "opening_hours": {"mon": [["20:00", "08:00"]]},
                },
            },
            ["properties.opening_hours"],
            "close after it opens",
        ),
        (
            {**square("bow", 8.5, 47.3), "properties": {"name": "x", "opening_hours": {"xyz": []}}},
            ["properties.opening_hours.xyz"],
            "",
        ),
        (square("bow", 8.0, 47.0, side_deg=0.7), ["geometry"], "2500 km"),
    ],
)
async def test_invalid_zone_is_422_naming_the_field_and_changes_nothing(
    client, make_tenant: TenantFactory, redis: Redis, feature, fields, needle
):
    keys = await make_tenant()
    before = await snapshot(redis)
    response = await client.put("/v1/zones/bow", json=feature, headers=keys.secret)
    assert response.status == 422, await response.text()
    body = await response.json()
    got = sorted({e["field"] for e in body["errors"]})
    assert got == sorted(fields), body
    assert needle in " ".join(e["message"] for e in body["errors"])
    assert await snapshot(redis) == before


async def test_invalid_path_id_is_422(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.put("/v1/zones/-bad", json=circle("-bad"), headers=keys.secret)
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["zone_id"]


async def test_import_creates_and_updates(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    collection = {"type": "FeatureCollection", "features": [circle(f"c{i}") for i in range(3)]}
    response = await client.post("/v1/zones/import", json=collection, headers=keys.secret)
    assert response.status == 200, await response.text()
    assert await response.json() == {"created": 3, "updated": 0}
    collection["features"].append(square("m1", 8.5, 47.3))
    response = await client.post("/v1/zones/import", json=collection, headers=keys.secret)
    assert await response.json() == {"created": 1, "updated": 3}


async def test_import_is_all_or_nothing_and_names_each_bad_feature(
    client, make_tenant: TenantFactory, redis: Redis
):
    keys = await make_tenant()
    await client.put("/v1/zones/c0", json=circle("c0"), headers=keys.secret)
    before = await snapshot(redis)
    features = [circle("c0", radius_m=300), circle("c1"), bowtie(), circle("c3"), circle("c1")]
    features[3]["properties"]["radius_m"] = 1
    features.append(
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [8, 47]},
            "properties": {"name": "no id", "radius_m": 50},
        }
    )
    response = await client.post(
        "/v1/zones/import",
        json={"type": "FeatureCollection", "features": features},
        headers=keys.secret,
    )
    assert response.status == 422
    body = await response.json()
    assert [(f["index"], f["id"]) for f in body["invalid_features"]] == [
        (2, "bow"),
        (3, "c3"),
        (4, "c1"),
        (5, None),
    ]
    assert {e["field"] for e in body["errors"]} == {
        "features[2].geometry.coordinates",
        "features[3].properties.radius_m",
        "features[4].id",
        "features[5].id",
    }
    assert await snapshot(redis) == before


async def test_import_over_10000_features_is_422(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    collection = {"type": "FeatureCollection", "features": [circle("c")] * 10_001}
    response = await client.post(
        "/v1/zones/import",
        data=io.BytesIO(orjson.dumps(collection)),
        headers={**keys.secret, "Content-Type": "application/json"},
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["features"]


async def test_a_zone_change_reaches_another_instance_within_a_second(
    client, make_client: AppClientFactory, make_tenant: TenantFactory
):
    keys = await make_tenant()
    other = await make_client()
    directory = other.app[ZONES].directory
    lon, lat = ZRH
    await client.put("/v1/zones/z1", json=circle("z1"), headers=keys.secret)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not directory.lookup("acme", lat, lon) and loop.time() - started < 1.0:
        await asyncio.sleep(0.01)
    assert [z.zone_id for z in directory.lookup("acme", lat, lon)] == ["z1"]
    await client.delete("/v1/zones/z1", headers=keys.secret)
    started = loop.time()
    while directory.lookup("acme", lat, lon) and loop.time() - started < 1.0:
        await asyncio.sleep(0.01)
    assert directory.lookup("acme", lat, lon) == []


async def test_a_new_instance_loads_every_zone_before_it_is_ready(
    client, make_client: AppClientFactory, make_tenant: TenantFactory
):
    keys = await make_tenant()
    features = [circle(f"c{i}", lon=8.5 + i * 0.01) for i in range(20)]
    await client.post(
        "/v1/zones/import",
        json={"type": "FeatureCollection", "features": features},
        headers=keys.secret,
    )
    late = await make_client()
    assert (await late.get("/readyz")).status == 200
    directory = late.app[ZONES].directory
    assert directory.zone_count() == 20
    assert [z.zone_id for z in directory.lookup("acme", ZRH[1], 8.5 + 7 * 0.01)] == ["c7"]


async def test_a_query_parameter_given_twice_is_422(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.get("/v1/zones?limit=2&limit=3", headers=keys.secret)
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["limit"]

"""Tenants and keys: creation, rotation (also seen by another instance), settings."""

from __future__ import annotations

import asyncio
import hashlib

from redis.asyncio import Redis

from tests.conftest import OPERATOR, AppClientFactory, TenantFactory


async def test_create_returns_keys_once_and_stores_only_hashes(
    client, make_tenant: TenantFactory, redis: Redis
):
    keys = await make_tenant("acme")
    assert keys.secret_key.startswith("sk_")
    assert keys.sdk_key.startswith("pk_")
    dump = b""
    async for key in redis.scan_iter():
        dump += key
        kind = await redis.type(key)
        if kind == b"hash":
            dump += b"".join(k + v for k, v in (await redis.hgetall(key)).items())
    assert keys.secret_key.encode() not in dump
    assert keys.sdk_key.encode() not in dump
    assert hashlib.sha256(keys.secret_key.encode()).hexdigest().encode() in dump


async def test_duplicate_tenant_is_409_and_keeps_the_first(client, make_tenant: TenantFactory):
    keys = await make_tenant("acme")
    response = await client.post(
        "/v1/tenants", json={"tenant_id": "acme", "name": "Impostor"}, headers=OPERATOR
    )
    assert response.status == 409
    tenant = await (await client.get("/v1/tenant", headers=keys.secret)).json()
    assert tenant["name"] == "Acme"


async def test_get_tenant_shows_defaults(client, make_tenant: TenantFactory):
    keys = await make_tenant("acme")
    tenant = await (await client.get("/v1/tenant", headers=keys.secret)).json()
    assert tenant["tenant_id"] == "acme"
    assert tenant["timezone"] == "Europe/Zurich"
    assert {k: tenant[k] for k in tenant if k not in ("tenant_id", "name", "created_at")} == {
        "timezone": "Europe/Zurich",
        "max_offers_per_day": 3,
        "zone_cooldown_s": 14400,
        "max_accuracy_m": 100.0,
        "exit_margin_m": 30.0,
        "interest_half_life_s": 604800,
        "interest_lookback_s": 2419200,
        "offer_min_freshness_s": 120,
    }


async def test_patch_changes_only_what_is_sent(client, make_tenant: TenantFactory):
    keys = await make_tenant("acme")
    response = await client.patch(
        "/v1/tenant", json={"max_offers_per_day": 5, "exit_margin_m": 12.5}, headers=keys.secret
    )
    assert response.status == 200
    tenant = await (await client.get("/v1/tenant", headers=keys.secret)).json()
    assert tenant["max_offers_per_day"] == 5
    assert tenant["exit_margin_m"] == 12.5
    assert tenant["zone_cooldown_s"] == 14400


async def test_patch_seen_by_another_instance(
    make_client: AppClientFactory, make_tenant: TenantFactory
):
    keys = await make_tenant("acme")
    other = await make_client()
    before = await (await other.get("/v1/tenant", headers=keys.secret)).json()
    assert before["max_offers_per_day"] == 3  # now cached on the other instance
    first = await make_client()
    await first.patch("/v1/tenant", json={"max_offers_per_day": 7}, headers=keys.secret)
    for _ in range(50):
        after = await (await other.get("/v1/tenant", headers=keys.secret)).json()
        if after["max_offers_per_day"] == 7:
            break
        await asyncio.sleep(0.02)
    assert after["max_offers_per_day"] == 7


async def test_rotation_invalidates_the_old_key_on_every_instance(
    client, make_client: AppClientFactory, make_tenant: TenantFactory
):
    keys = await make_tenant("acme")
    other = await make_client()
    assert (await other.get("/v1/tenant", headers=keys.secret)).status == 200  # cached there
    response = await client.post(
        "/v1/tenants/acme/keys/rotate", json={"kind": "secret"}, headers=OPERATOR
    )
    assert response.status == 200
    body = await response.json()
    assert body["kind"] == "secret"
    assert body["key"].startswith("sk_")
    assert body["key"] != keys.secret_key
    new = {"Authorization": f"Bearer {body['key']}"}
    assert (await client.get("/v1/tenant", headers=keys.secret)).status == 401
    assert (await client.get("/v1/tenant", headers=new)).status == 200
    for _ in range(50):
        if (await other.get("/v1/tenant", headers=keys.secret)).status == 401:
            break
        await asyncio.sleep(0.02)
    assert (await other.get("/v1/tenant", headers=keys.secret)).status == 401
    assert (await other.get("/v1/tenant", headers=new)).status == 200
    # The SDK key is untouched by a secret-key rotation.
    assert (await client.get("/v1/tenant", headers=keys.sdk)).status == 403


async def test_rotate_unknown_tenant_is_404(client):
    response = await client.post(
        "/v1/tenants/ghost/keys/rotate", json={"kind": "sdk"}, headers=OPERATOR
    )
    assert response.status == 404


async def test_rotate_bad_kind_is_422(client, make_tenant: TenantFactory):
    await make_tenant("acme")
    response = await client.post(
        "/v1/tenants/acme/keys/rotate", json={"kind": "master"}, headers=OPERATOR
    )
    assert response.status == 422
    assert [e["field"] for e in (await response.json())["errors"]] == ["kind"]


async def test_keys_of_one_tenant_never_reach_another(client, make_tenant: TenantFactory):
    a = await make_tenant("tenant-a")
    b = await make_tenant("tenant-b")
    assert (await (await client.get("/v1/tenant", headers=a.secret)).json())["tenant_id"] == (
        "tenant-a"
    )
    await client.patch("/v1/tenant", json={"max_offers_per_day": 9}, headers=a.secret)
    tenant_b = await (await client.get("/v1/tenant", headers=b.secret)).json()
    assert tenant_b["max_offers_per_day"] == 3


async def test_invalid_tenant_creation_lists_fields_and_creates_nothing(client, redis: Redis):
    response = await client.post(
        "/v1/tenants",
        json={"tenant_id": "-bad", "name": "", "timezone": "Nowhere/City"},
        headers=OPERATOR,
    )
    assert response.status == 422
    fields = sorted(e["field"] for e in (await response.json())["errors"])
    assert fields == ["name", "tenant_id", "timezone"]
    assert [k async for k in redis.scan_iter("geo:tenant*")] == []

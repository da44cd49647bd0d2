"""The HTTP edge every route shares: negotiation, size limits, problem documents, key kinds."""

from __future__ import annotations

import asyncio
import io
import math

import msgpack
import pytest
from redis.asyncio import Redis

from geoservice.errors import NotAcceptable
from geoservice.http import codec as http_codec
from tests.conftest import (
    OPERATOR,
    OPERATOR_TOKEN,
    AppClientFactory,
    TenantFactory,
    bearer,
    free_port,
    packb,
)

PROBLEM = "application/problem+json"


async def assert_problem(response, status: int, *fields: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:geoservice:problem:")
    assert body["title"]
    assert body["detail"]
    if fields:
        assert sorted(e["field"] for e in body["errors"]) == sorted(fields)
    return body


async def test_malformed_json_is_400_and_worker_stays_up(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    for raw in (b"{", b'{"max_offers_per_day": }', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        response = await client.patch(
            "/v1/tenant", data=raw, headers={**keys.secret, "Content-Type": "application/json"}
        )
        await assert_problem(response, 400)
    assert (await client.get("/healthz")).status == 200


async def test_garbled_msgpack_is_400(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    for raw in (b"\xc1", b"\x81\xa3ab", packb({"a": 1}) + b"\x00", b"\x81\x01\x02"):
        response = await client.patch(
            "/v1/tenant", data=raw, headers={**keys.secret, "Content-Type": "application/msgpack"}
        )
        await assert_problem(response, 400)
    assert (await client.get("/healthz")).status == 200


async def test_two_megabyte_body_is_413(client, make_tenant: TenantFactory, redis: Redis):
    keys = await make_tenant()
    before = await redis.hgetall("geo:tenant:{t:acme}")
    payload = b'{"name": "' + b"x" * 2_000_000 + b'"}'
    response = await client.patch(
        "/v1/tenant",
        data=io.BytesIO(payload),
        headers={**keys.secret, "Content-Type": "application/json"},
    )
    await assert_problem(response, 413)
    assert await redis.hgetall("geo:tenant:{t:acme}") == before
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_nan_and_infinity_are_422_naming_the_field(
    client, make_tenant: TenantFactory, redis: Redis, codec: str
):
    keys = await make_tenant()
    before = await redis.hgetall("geo:tenant:{t:acme}")
    if codec == "json":
        raw = b'{"max_accuracy_m": NaN, "exit_margin_m": Infinity}'
        content_type = "application/json"
    else:
        raw = packb({"max_accuracy_m": math.nan, "exit_margin_m": math.inf})
        content_type = "application/msgpack"
    response = await client.patch(
        "/v1/tenant", data=raw, headers={**keys.secret, "Content-Type": content_type}
    )
    await assert_problem(response, 422, "max_accuracy_m", "exit_margin_m")
    assert await redis.hgetall("geo:tenant:{t:acme}") == before


async def test_every_bad_field_is_listed(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.patch(
        "/v1/tenant",
        json={
            "max_offers_per_day": "3",  # a string is not an integer: no coercion
            "zone_cooldown_s": -1,
            "max_accuracy_m": 10_001,
            "timezone": "Mars/Olympus",
            "colour": "blue",
            "interest_lookback_s": 2**70,
        },
        headers=keys.secret,
    )
    await assert_problem(
        response,
        422,
        "max_offers_per_day",
        "zone_cooldown_s",
        "max_accuracy_m",
        "timezone",
        "colour",
        "interest_lookback_s",
    )


async def test_body_that_is_not_an_object_is_422(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.patch("/v1/tenant", json=[1, 2], headers=keys.secret)
    await assert_problem(response, 422, "body")


async def test_unsupported_content_type_is_415(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.patch(
        "/v1/tenant", data=b"name=x", headers={**keys.secret, "Content-Type": "text/plain"}
    )
    await assert_problem(response, 415)


async def test_unacceptable_accept_is_406_before_any_change(
    client, make_tenant: TenantFactory, redis: Redis
):
    keys = await make_tenant()
    before = await redis.hgetall("geo:tenant:{t:acme}")
    response = await client.patch(
        "/v1/tenant", json={"name": "Changed"}, headers={**keys.secret, "Accept": "text/html"}
    )
    await assert_problem(response, 406)
    assert await redis.hgetall("geo:tenant:{t:acme}") == before


async def test_msgpack_in_and_out(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    response = await client.patch(
        "/v1/tenant",
        data=packb({"max_offers_per_day": 5}),
        headers={
            **keys.secret,
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
        },
    )
    assert response.status == 200
    assert response.content_type == "application/msgpack"
    body = msgpack.unpackb(await response.read())
    assert body["max_offers_per_day"] == 5


async def test_accept_quality_values_pick_the_best(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    headers = {**keys.secret, "Accept": "application/json;q=0.5, application/msgpack"}
    response = await client.get("/v1/tenant", headers=headers)
    assert response.content_type == "application/msgpack"
    response = await client.get("/v1/tenant", headers={**keys.secret, "Accept": "*/*"})
    assert response.content_type == "application/json"


async def test_problem_in_msgpack_when_asked(client):
    response = await client.get("/v1/tenant", headers={"Accept": "application/msgpack"})
    assert response.status == 401
    assert response.content_type == "application/msgpack"
    assert msgpack.unpackb(await response.read())["status"] == 401


async def test_missing_and_unknown_keys_are_401(client, make_tenant: TenantFactory):
    await make_tenant()
    await assert_problem(await client.get("/v1/tenant"), 401)
    await assert_problem(await client.get("/v1/tenant", headers={"Authorization": "Basic x"}), 401)
    await assert_problem(await client.get("/v1/tenant", headers=bearer("sk_nope")), 401)


async def test_key_of_the_wrong_kind_is_403(client, make_tenant: TenantFactory):
    keys = await make_tenant()
    await assert_problem(await client.get("/v1/tenant", headers=keys.sdk), 403)
    await assert_problem(await client.get("/v1/tenant", headers=OPERATOR), 403)
    body = {"tenant_id": "other", "name": "Other"}
    await assert_problem(await client.post("/v1/tenants", json=body, headers=keys.secret), 403)
    await assert_problem(await client.post("/v1/tenants", json=body, headers=keys.sdk), 403)


async def test_unknown_route_is_404_and_wrong_method_405(client):
    await assert_problem(await client.get("/v1/nothing-here"), 404)
    response = await client.delete("/healthz")
    await assert_problem(response, 405)
    assert response.headers["Allow"] == "GET"
    # The import route and a zone's route share a path: the answer names both truthfully.
    response = await client.patch("/v1/zones/import")
    await assert_problem(response, 405)
    assert response.headers["Allow"] == "POST"


async def test_store_outage_is_503_with_retry_after(make_client: AppClientFactory):
    # An instance whose Redis is not there: the request fails fast with a problem, not a hang.
    dead = await make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", wait_ready=False)
    response = await dead.get("/v1/tenant", headers=bearer("sk_whatever"))
    body = await assert_problem(response, 503)
    assert response.headers["Retry-After"].isdigit()
    assert "store" in body["detail"]
    assert (await dead.get("/healthz")).status == 200
    await assert_problem(await dead.get("/readyz"), 503)


async def test_overload_is_a_fast_503(make_client: AppClientFactory):
    client = await make_client(max_in_flight=1)
    # A request whose body never finishes arriving keeps one slot taken.
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    response = await client.get("/healthz")
    await assert_problem(response, 503)
    assert response.headers["Retry-After"] == "1"
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.1)
    assert (await client.get("/healthz")).status == 200


async def test_metrics_count_requests_and_latency_by_route_and_status(client):
    await client.get("/healthz")
    await client.get("/v1/tenant")
    text = await (await client.get("/metrics")).text()
    assert 'geoservice_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'geoservice_http_requests_total{method="GET",route="/v1/tenant",status="401"}' in text
    assert (
        'geoservice_http_request_duration_seconds_bucket{le="0.005",method="GET",'
        'route="/healthz",status="200"}'
    ) in text


def test_accept_negotiation_is_remembered_but_bounded_and_refusals_are_not():
    negotiate, remembered = http_codec.response_codec, http_codec._NEGOTIATED
    remembered.clear()
    msgpack_first = "application/json;q=0.5, application/msgpack"
    assert negotiate(msgpack_first) == negotiate(msgpack_first) == http_codec.MSGPACK
    assert negotiate("application/msgpack;q=0.2, */*") == http_codec.JSON
    for _ in range(2):
        with pytest.raises(NotAcceptable):
            negotiate("text/html")
    assert "text/html" not in remembered
    for n in range(http_codec.MAX_NEGOTIATED * 2):
        assert negotiate(f"application/msgpack;x={n}") == http_codec.MSGPACK
    assert len(remembered) == http_codec.MAX_NEGOTIATED
    assert negotiate("application/json;q=0.9, application/msgpack;q=1") == http_codec.MSGPACK

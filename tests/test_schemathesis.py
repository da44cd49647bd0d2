"""Property-based checks of the whole API against its own OpenAPI document (schemathesis):
schema-valid and schema-invalid requests to a real service process; no 5xx, and every answer
must match the spec (status, content type, body schema)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import msgpack
import orjson
import pytest
import schemathesis
from hypothesis import settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from geoservice.http.app import all_endpoints
from geoservice.http.openapi import build_spec
from tests.conftest import free_port

pytestmark = pytest.mark.slow

OPERATOR_TOKEN = "schemathesis-operator-token-0123"


def _representable(value: object) -> object:
    """msgpack has no integers beyond 64 bits: such a value goes as a float, the closest
    thing a msgpack client could send."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_representable(v) for v in value]
    if isinstance(value, dict):
        return {k: _representable(v) for k, v in value.items()}
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: object, value: object) -> bytes:
    packed: bytes = msgpack.packb(_representable(value), use_bin_type=True)
    return packed


schema = schemathesis.openapi.from_dict(build_spec(all_endpoints()))
# Bounded so the suite stays fast; each operation gets schema-valid and schema-invalid data.
schema.config.generation.update(max_examples=15)


def _post(url: str, body: dict, token: str) -> dict:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict = orjson.loads(response.read())
        return answer


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOSERVICE_", "REDIS_"))}
    env["GEOSERVICE_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    process = subprocess.Popen(
        [sys.executable, "-m", "geoservice", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        created = _post(f"{base}/v1/tenants", {"tenant_id": "fuzz", "name": "Fuzz"}, OPERATOR_TOKEN)
        keys = {
            "operatorToken": OPERATOR_TOKEN,
            "secretKey": created["secret_key"],
            "sdkKey": created["sdk_key"],
        }
        yield base, keys
    finally:
        process.terminate()
        process.wait(timeout=30)


@schema.parametrize()
# Derandomized: CI sees the same examples every run (a new finding comes from a code or spec
# change, not from the dice). Turn derandomize off locally to explore further.
@settings(derandomize=True, database=None)
def test_api_conforms_to_its_openapi(case, service):
    base, keys = service
    security = case.operation.definition.raw.get("security") or []
    headers = {}
    if security:
        scheme = next(iter(security[0]))
        headers["Authorization"] = f"Bearer {keys[scheme]}"
    # A schema cannot say everything that makes a request valid (a real IANA time zone, a day
    # of the calendar, a zone id the tenant has, a cursor the service handed out): such
    # requests are rightly 422, so "schema-valid data must be accepted" is not checked.
    case.call_and_validate(
        base_url=base, headers=headers, excluded_checks=[positive_data_acceptance]
    )

"""The spec is generated from the endpoint table; docs/api.md must cover every route in it."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


async def test_spec_lists_every_route_with_its_answers(client):
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert ("POST", "/v1/tenants") in operations
    assert ("PATCH", "/v1/tenant") in operations
    patch = spec["paths"]["/v1/tenant"]["patch"]
    assert {"200", "401", "403", "413", "415", "422", "503"} <= set(patch["responses"])
    assert patch["security"] == [{"secretKey": []}]
    schema_names = set(spec["components"]["schemas"])
    for item in spec["paths"].values():
        for operation in item.values():
            for ref in re.findall(r"#/components/schemas/(\w+)", str(operation)):
                assert ref in schema_names


async def test_docs_cover_every_route_of_the_spec(client):
    spec = await (await client.get("/openapi.json")).json()
    documented = set(re.findall(r"^### `(\w+) (\S+)`", DOCS.read_text(), re.MULTILINE))
    missing = [
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method in item
        if not any(method.upper() in m.split(",") and p == path for m, p in documented)
    ]
    assert missing == []

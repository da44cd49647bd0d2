"""Fuzzing the edges with hypothesis: the body decoders, the wire models and the GeoJSON
validation take anything and answer only with their own 4xx errors, in bounded memory."""

from __future__ import annotations

import contextlib
import math
import tracemalloc

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoservice.errors import GeoserviceError, UndecodableBody, ValidationFailed
from geoservice.geometry import GeometryError, shape_from_geojson
from geoservice.http.codec import JSON, MSGPACK, decode, validate
from geoservice.http.pings import PingRequest
from geoservice.http.zones import ZoneImport, check_import

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=40,
)


def _is_4xx(error: GeoserviceError) -> bool:
    return 400 <= error.status < 500


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([JSON, MSGPACK]))
def test_any_bytes_decode_or_are_a_400(raw: bytes, codec: str):
    status = None
    try:
        decode(raw, codec)
    except UndecodableBody as error:
        status = error.status
    assert status in (None, 400)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_structure_validates_or_is_a_422(value: object):
    named: list[str] | None = None
    try:
        validate(PingRequest, value)
    except ValidationFailed as error:
        named = [p.field for p in error.errors]
    assert named is None or named


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_structure_as_a_zone_import_is_a_422_at_worst(value: object):
    for feature in (
        {"type": "Feature", "id": "z", "geometry": value, "properties": {"name": "n"}},
        value,
    ):
        refused: GeoserviceError | None = None
        try:
            check_import([feature])
        except ValidationFailed as error:
            refused = error
        assert refused is None or _is_4xx(refused)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_any_geometry_is_a_shape_or_a_geometry_error(geometry: object, radius: object):
    problems = None
    try:
        shape_from_geojson(geometry, radius)
    except GeometryError as error:
        problems = error.errors
    assert problems is None or problems


def test_deep_nesting_is_a_400_not_a_crash():
    for raw, codec in (
        (b"[" * 200_000 + b"]" * 200_000, JSON),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON),
        (b"\x91" * 200_000 + b"\x01", MSGPACK),
    ):
        try:
            decode(raw, codec)
        except UndecodableBody:
            continue
        raise AssertionError("deep nesting was decoded")


def test_huge_numbers_nan_and_duplicate_keys():
    body = b'{"device_id": "d", "pings": [{"lat": 1e400, "lon": 8, "accuracy_m": 5, "ts": 1}]}'
    with pytest.raises(ValidationFailed) as infinite:
        validate(PingRequest, decode(body, JSON))
    assert [p.field for p in infinite.value.errors] == ["pings[0].lat"]
    big = orjson.dumps({"device_id": "d", "pings": []}).replace(b"[]", b"[" + b"9" * 400 + b"]")
    with pytest.raises(ValidationFailed) as huge:
        validate(PingRequest, decode(big, JSON))
    assert huge.value.errors[0].field.startswith("pings")
    nan = msgpack.packb({"device_id": "d", "pings": [{"lat": math.nan}]})
    with pytest.raises(ValidationFailed) as not_a_number:
        validate(PingRequest, decode(nan, MSGPACK))
    assert "pings[0].lat" in [p.field for p in not_a_number.value.errors]
    # Duplicate keys: the last one wins, as in every mainstream JSON parser; documented.
    twice = (
        b'{"device_id": "a", "device_id": "b",'
        b' "pings": [{"lat": 1, "lon": 2, "accuracy_m": 3, "ts": 4}]}'
    )
    assert validate(PingRequest, decode(twice, JSON)).device_id == "b"


def test_huge_and_polar_polygons_in_bounded_memory():
    ring = [
        [8 + 0.001 * math.cos(i / 1600 * math.tau), 47 + 0.001 * math.sin(i / 1600 * math.tau)]
        for i in range(16_000)
    ]
    ring.append(ring[0])
    too_many = {"type": "Polygon", "coordinates": [ring]}
    cap = {
        "type": "Polygon",
        "coordinates": [[[-180, 89.9], [180, 89.9], [180, 90], [-180, 90], [-180, 89.9]]],
    }
    wide = {
        "type": "Polygon",
        "coordinates": [[[-170, 10], [170, 10], [170, 11], [-170, 11], [-170, 10]]],
    }
    tracemalloc.start()
    try:
        for geometry in (too_many, cap, wide):
            with contextlib.suppress(GeometryError):
                shape_from_geojson(geometry, None)
        collection = {
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "id": "big", "geometry": too_many, "properties": {"name": "x"}}
            ],
        }
        with pytest.raises(ValidationFailed) as too_big:
            check_import(validate(ZoneImport, collection).features)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert too_big.value.extra["invalid_count"] == 1
    assert peak < 64 * 1024 * 1024

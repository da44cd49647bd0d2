"""Shared pieces of the wire models: the strict base, id patterns, the problem document."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
EpochMs = Annotated[int, Field(ge=0, le=253_402_300_799_999, description="epoch milliseconds")]


class Wire(BaseModel):
    """Requests: strict types (no "1" for 1), no unknown fields, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Out(BaseModel):
    """Responses: documented by the same schema machinery, never validated on the way out."""

    model_config = ConfigDict(frozen=True)


class FieldError(Out):
    field: str = Field(description="path of the offending field, e.g. pings[3].lat")
    message: str


class Problem(Out):
    """An RFC 9457 problem document."""

    type: str = Field(description="urn:geoservice:problem:<slug>")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class Page(BaseModel):
    """?limit=&cursor= of every list (query strings, so numbers arrive as text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Annotated[str, Field(max_length=1024)] | None = None

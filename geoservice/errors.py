"""Every error the service answers with, one class per problem type.

The HTTP layer renders these as RFC 9457 problem documents; domain modules raise them and never
think about status codes beyond the class they pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    message: str


class GeoserviceError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldProblem] | None = None,
        retry_after_s: int | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.retry_after_s = retry_after_s
        # Fields added to the problem document beside the standard ones (e.g. the first redemption).
        self.extra = extra or {}
        self.headers = headers or {}


class UndecodableBody(GeoserviceError):
    status, slug, title = 400, "undecodable-body", "Body could not be decoded"


class BadRequest(GeoserviceError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(GeoserviceError):
    status, slug, title = 401, "unauthorized", "Missing or unknown key"


class Forbidden(GeoserviceError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(GeoserviceError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(GeoserviceError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class NotAcceptable(GeoserviceError):
    status, slug, title = 406, "not-acceptable", "Not acceptable"


class Conflict(GeoserviceError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(GeoserviceError):
    status, slug, title = 410, "gone", "Gone"


class PayloadTooLarge(GeoserviceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(GeoserviceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(GeoserviceError):
    status, slug, title = 422, "validation-failed", "Validation failed"

    @classmethod
    def of(cls, problems: list[FieldProblem], **kwargs: Any) -> ValidationFailed:
        named = ", ".join(p.field for p in problems[:10])
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        return cls(f"{len(problems)} invalid field(s): {named}{more}", errors=problems, **kwargs)


class RateLimited(GeoserviceError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class Unavailable(GeoserviceError):
    status, slug, title = 503, "unavailable", "Service unavailable"


PROBLEM_TYPE_PREFIX = "urn:geoservice:problem:"

ALL_PROBLEMS: tuple[type[GeoserviceError], ...] = (
    UndecodableBody,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    Conflict,
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    RateLimited,
    Unavailable,
    GeoserviceError,
)

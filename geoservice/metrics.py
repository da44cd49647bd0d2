"""Prometheus metrics of the service. With several workers, prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set by the parent before the workers start) sums them."""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "geoservice_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "geoservice_http_request_duration_seconds",
    "Time from request to response",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REJECTED_OVERLOAD = Counter(
    "geoservice_overload_rejections_total",
    "Requests refused with 503 because too many were in flight",
)

# Webhooks: by tenant or webhook would be too many series; the delivery log per webhook has that.
WEBHOOK_DELIVERIES = Counter(
    "geoservice_webhook_deliveries_total",
    "Webhook POSTs by outcome: sent (2xx) or failed per attempt; retried: attempts repeating "
    "an earlier one; dropped: batches given up after the retry window",
    ["outcome"],
)
WEBHOOK_EVENTS_DROPPED = Counter(
    "geoservice_webhook_events_dropped_total",
    "Events in webhook batches given up after the retry window",
)
WEBHOOK_LAG_SECONDS = Histogram(
    "geoservice_webhook_lag_seconds",
    "Time from an event entering the event stream to its receiver answering 2xx",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0),
)


# prometheus-client's labels() lookup costs more than the update itself on every request, so
# each series is looked up once. Routes are patterns (not paths), so the cache stays small.
@functools.cache
def request_series(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The counter and the duration histogram of one (route, method, status)."""
    return (
        REQUESTS.labels(route, method, str(status)),
        REQUEST_SECONDS.labels(route, method, str(status)),
    )


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

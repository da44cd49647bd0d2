# syntax=docker/dockerfile:1
# Build stage: wheels of geoservice (with its pages under geoservice/static) and its dependencies.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY geoservice ./geoservice
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compilers, no sources, a non-root user.
FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home geoservice
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
# The zone index's compiled lookups (numba) are cached here, compiled once at build time and
# writable by the service's user (a CPU unlike the build machine's gets its own entries).
ENV NUMBA_CACHE_DIR=/var/cache/geoservice/numba
RUN mkdir -p "$NUMBA_CACHE_DIR" \
    && python -c 'from geoservice.index import ZoneIndex; ZoneIndex()' \
    && chown -R 10001 /var/cache/geoservice
# The example zones for `geoservice serve --demo` (the package does not carry data files).
COPY zones/switzerland.geojson /usr/share/geoservice/zones/switzerland.geojson
USER 10001
ENV GEOSERVICE_HOST=0.0.0.0 \
    GEOSERVICE_PORT=8080 \
    GEOSERVICE_DEMO_ZONES=/usr/share/geoservice/zones/switzerland.geojson \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["geoservice", "serve"]

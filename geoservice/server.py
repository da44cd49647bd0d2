"""Running the service: one worker in-process, or N worker processes sharing the port
(SO_REUSEPORT) under a small supervisor that forwards SIGTERM and stops the embedded Redis last."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

from aiohttp import web

from geoservice.embedded_redis import EmbeddedRedis
from geoservice.settings import Settings

log = logging.getLogger("geoservice")
# Python's default is 5 ms: each turn of a worker's event loop would wait that long for the GIL
# while a thread works beside it (python -m loadtest.bench_import --live).
SWITCH_INTERVAL_S = 0.001


def configure_logging(level: str, worker_index: int | None = None) -> None:
    who = "main" if worker_index is None else f"worker-{worker_index}"
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{who} %(process)d] %(name)s: %(message)s",
        force=True,
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's, when it is installed (it is a dependency; the fallback is for a bare checkout)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def serve_app(settings: Settings, *, started: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, drain in-flight requests, close."""
    from geoservice.http.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_grace_s
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=settings.workers > 1, backlog=2048
        )
        await site.start()
        port = settings.port
        server = site._server
        if isinstance(server, asyncio.Server) and server.sockets:
            port = server.sockets[0].getsockname()[1]
        if started is not None:
            started(port)
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %.0f s)", settings.shutdown_grace_s)
    finally:
        await runner.cleanup()


def run_serving(settings: Settings, started: Callable[[int], None] | None = None) -> None:
    """The process's event loop serving the app, as a worker or as the only process."""
    # Threads beside the event loop (an import's validation and covers, index rebuilds) hold
    # the GIL for up to this long before the loop gets it back, at every turn of the loop.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve_app(settings, started=started))


def run_worker(settings: Settings, worker_index: int | None = None) -> None:
    configure_logging(settings.log_level, worker_index)
    if worker_index is not None:
        settings = replace(settings, instance_id=f"{settings.instance_id}-{worker_index}")
    run_serving(settings)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _supervise(settings: Settings) -> int:
    """Start the workers, restart one that dies, and on SIGTERM/SIGINT stop them all."""
    context = multiprocessing.get_context("spawn")
    workers: dict[int, BaseProcess] = {}
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def start(index: int) -> None:
        process = context.Process(target=run_worker, args=(settings, index), daemon=False)
        process.start()
        workers[index] = process

    for index in range(settings.workers):
        start(index)
    last_restart = 0.0
    while not stopping:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            if not process.is_alive() and not stopping:
                log.error("worker-%d exited with %s; restarting it", index, process.exitcode)
                if time.monotonic() - last_restart < 1.0:
                    time.sleep(1.0)  # a crash loop must not spin the CPU
                last_restart = time.monotonic()
                start(index)
    for process in workers.values():
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + 5
    for process in workers.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker pid %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
    return 0


def serve(
    settings: Settings, *, demo: bool = False, announce: Callable[[str], None] | None = None
) -> int:
    announce = announce or _say
    configure_logging(settings.log_level)
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            embedded = stack.enter_context(EmbeddedRedis())
            settings = replace(settings, redis_url=embedded.url)
            announce(f"geoservice: embedded Redis at {embedded.url} (kept in memory only)")
        if settings.workers > 1:
            if settings.port == 0:
                settings = replace(settings, port=_free_port(settings.host))
            metrics_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="geoservice-prom-")
            )
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        if demo:
            from geoservice.demo import seed_demo

            for line in asyncio.run(seed_demo(settings)):
                announce(line)
        if "GEOSERVICE_OPERATOR_TOKEN" in settings.generated_secrets:
            announce(f"geoservice: operator token for this run: {settings.operator_token}")
        if settings.workers == 1:

            def started(port: int) -> None:
                announce(f"geoservice: listening on http://{settings.host}:{port} (1 worker)")

            configure_logging(settings.log_level, None)
            run_serving(settings, started)
            return 0
        announce(
            f"geoservice: listening on http://{settings.host}:{settings.port} "
            f"({settings.workers} workers)"
        )
        return _supervise(settings)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)

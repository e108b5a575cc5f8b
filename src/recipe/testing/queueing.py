"""The stub server's model of a self-hosted engine: a bounded batch, a queue, load-dependent speed.

vLLM, SGLang and NIM never answer 429: past what they can batch, requests wait. This module is
the stub's option for that (``python -m recipe.testing.stub_server --capacity C --service-ms S``):

- at most ``C`` requests are served at once, each taking ``S`` ms; the rest wait, first come first
  served (``--capacity 0`` leaves the stub's own behaviour unchanged);
- ``--service-ms-per-request L``: a request started with ``n`` requests in service takes
  ``S + L·(n-1)`` ms, so throughput ``n / (S + L·(n-1))`` keeps rising, ever more slowly, with
  the batch until ``C`` (memory) caps it, as a real engine's does;
- ``POST /_capacity`` (body: the new ``C``) changes the capacity mid-run (a replica losing half
  its GPUs), and ``GET /_queue`` reports what was served and how long the queue grew.

The stub server only calls :func:`add_arguments`, :meth:`ServiceModel.from_args`,
:meth:`ServiceModel.serve` and :meth:`ServiceModel.routes`; everything else lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request

from aiohttp import web

from recipe.clients.limits import AdjustableGate

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--capacity", type=int, default=0, help="serve at most C at once, the rest wait; 0 = off")
    parser.add_argument("--service-ms", type=float, default=0.0, help="with --capacity: each request takes S ms")
    parser.add_argument("--service-ms-per-request", type=float, default=0.0,
                        help="with --capacity: L more ms per other request in service (load-dependent speed)")


class ServiceModel:
    """A FIFO queue in front of ``capacity`` servers whose speed depends on how many are busy."""

    def __init__(self, capacity: int = 0, service_ms: float = 0.0, per_request_ms: float = 0.0):
        self.capacity = int(capacity)
        self.service_ms = float(service_ms)
        self.per_request_ms = float(per_request_ms)
        self.gate = AdjustableGate(max(1, self.capacity))
        self.served = 0
        self.in_service = 0
        self.max_in_service = 0
        self.max_waiting = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServiceModel":
        return cls(args.capacity, args.service_ms, args.service_ms_per_request)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    async def serve(self) -> None:
        """Wait for a free server, then take the service time (no-op when off)."""
        if not self.enabled:
            return
        self.max_waiting = max(self.max_waiting, len(self.gate._waiters) + 1)
        await self.gate.acquire()
        try:
            self.in_service += 1
            self.max_in_service = max(self.max_in_service, self.in_service)
            ms = self.service_ms + self.per_request_ms * (self.in_service - 1)
            await asyncio.sleep(ms / 1000.0)
            self.served += 1
        finally:
            self.in_service -= 1
            self.gate.release()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_capacity", self._set_capacity)
        router.add_get("/_queue", self._report)

    async def _set_capacity(self, request: web.Request) -> web.Response:
        self.capacity = max(1, int((await request.text()).strip()))
        self.gate.resize(self.capacity)
        return web.json_response({"capacity": self.capacity})

    async def _report(self, request: web.Request) -> web.Response:
        return web.json_response({"capacity": self.capacity, "served": self.served,
                                  "in_service": self.in_service, "waiting": len(self.gate._waiters),
                                  "max_in_service": self.max_in_service,
                                  "max_waiting": self.max_waiting})


def queue_args(capacity: int, service_ms: float, per_request_ms: float = 0.0) -> list[str]:
    """The stub's command-line options for this model (``StubServer(extra_args=...)``)."""
    return [f"--capacity={capacity}", f"--service-ms={service_ms}", f"--service-ms-per-request={per_request_ms}"]


def set_capacity(port: int, capacity: int) -> None:
    """Change a running stub's capacity (``POST /_capacity``)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_capacity", data=str(capacity).encode(), method="POST")
    with _NO_PROXY.open(req, timeout=30) as r:
        r.read()


def queue_stats(port: int) -> dict:
    """A running stub's queue counters (``GET /_queue``)."""
    with _NO_PROXY.open(f"http://127.0.0.1:{port}/_queue", timeout=30) as r:
        return json.loads(r.read())

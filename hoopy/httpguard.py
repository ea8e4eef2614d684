"""A deadline for each HTTP request head on hoopy's aiohttp listeners (slowloris).

aiohttp has no header-read timeout: a client that sends a request's head one byte at
a time holds a connection (and its TLS state) for as long as it likes, and its
keep-alive timeout (an hour by default) does not end a connection whose next head is
still arriving.  Here each connection must deliver a complete request head within
`head_timeout` seconds of connecting, or of the first byte of a later request
(keep-alive); otherwise it is closed.  Bodies, streamed responses, watches and
upgraded (WebSocket) connections are not bounded by it.  Idle keep-alive connections
are closed after IDLE_TIMEOUT.  (A TLS handshake is bounded by asyncio's own 60 s.)

It hooks aiohttp's RequestHandler: `data_received` feeds the parser, which queues a
message once a head is complete (`_messages`); `_request_in_progress` is set while a
handler runs.  tests/integration/test_kube_guards.py checks both listeners end to end.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("hoopy.http")

# kube-apiserver (secure_serving.go): ReadHeaderTimeout 32 s, IdleTimeout 90 s.  kubectl
# writes a head at once, so hoopy allows less; idle connections live longer than Go
# clients keep them (90 s), so the client, not hoopy, closes an idle one (no race with
# a request sent on a connection the server is closing).
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0


class _GuardedHandler(RequestHandler):
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress or self._upgraded:
            self._disarm()  # a head is complete (or the bytes belong to a request)
        elif self._head_timer is None:
            self._arm()  # the first bytes of a later request's head

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        timeout = getattr(self._manager, "head_timeout", HEAD_TIMEOUT)
        self._head_timer = self._loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self._messages or self._request_in_progress or self._upgraded:
            return
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.warning("closed a connection from %s: no complete request head in time", peer)
        self.force_close()


class GuardedServer(web.Server):
    """web.Server whose connections get a request-head deadline."""

    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT)
        super().__init__(*args, **kwargs)

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner whose server is a GuardedServer."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", IDLE_TIMEOUT)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GuardedServer  # same object, handlers made by GuardedServer
        return server

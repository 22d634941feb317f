"""uvicorn's HTTP protocol (httptools) with a header deadline: a connection that has not sent a complete
request head within `header_timeout_s` of opening (or of its previous answer) is closed.

uvicorn bounds the size of a request head and the idle time between keep-alive requests, but not the time a
client takes to send the head: a connection trickling half its headers would stay open forever, and enough of
them would take every connection the service allows (`max_connections`). Bodies have their own deadline in
`service.api.middleware` (408).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


class DeadlineHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the header deadline; `header_timeout_s` is set on a subclass (`with_deadline`)."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("closing a connection that sent no complete request head within %g s", self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:  # waiting for the next request's head
            self._arm_header_deadline()


def with_deadline(header_timeout_s: float) -> type[DeadlineHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline."""
    return type("DeadlineHttpProtocol", (DeadlineHttpProtocol,), {"header_timeout_s": header_timeout_s})

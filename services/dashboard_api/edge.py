"""What every request meets before and after the routes: security headers, request metrics, body and token checks.

Two layers, both plain ASGI so they see every byte without buffering anything:

- :class:`Edge` wraps the whole app (outside Starlette's error middleware), so even an
  unhandled error's 500 carries the security headers and is counted, under its route
  template (``/api/symbols/{exchange}/{symbol:path}``, never the raw path: a scraper
  must not be able to mint label values).
- :class:`BodyGuard` sits in front of the routes. An operator route's bearer token is
  checked from the headers, before one byte of the body is read: a client without the
  token can no longer make the API buffer a 100 MB body just to be told 401. Any body
  over ``API_MAX_BODY_BYTES`` is refused with 413 from its Content-Length, or, sent
  chunked, as soon as what arrived passes the limit.

The decisions (:func:`security_headers`, :func:`bearer_ok`, :func:`admit`) are pure.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page loads only its own /static files: one module script, one stylesheet, SVG drawn in place.
# Its markup sets style="width:…" attributes (bars, charts), hence 'unsafe-inline' for attributes
# only; a browser that knows style-src-elem refuses inline <style> elements all the same.
PAGE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "style-src-elem 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
# The /docs page is one inline script over Swagger UI served from /docs-assets (nothing from a CDN);
# it gets what it needs, and nothing framing it or posting forms elsewhere.
DOCS_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_COMMON = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
UNMATCHED = "unmatched"  # the route label of a path no route serves
# Any token is a method to uvicorn: label values a client picks must come from a fixed set.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def security_headers(path: str, docs_paths: Collection[str] = ()) -> list[tuple[bytes, bytes]]:
    csp = DOCS_CSP if path in docs_paths else PAGE_CSP
    return [(b"content-security-policy", csp.encode()), *_COMMON]


def bearer_ok(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` with exactly ``token``; a bare token or another scheme is refused."""
    if not authorization:
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.encode(), token.encode())


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


def admit(
    path: str, headers: Mapping[str, str], token: str | None, max_body: int, operator_paths: Collection[str]
) -> Refusal | None:
    """Whether a request may reach the routes, judged from its headers alone (its body is not read)."""
    if path in operator_paths:
        if token is None:
            return Refusal(403, "operator endpoints are disabled: start dashboard_api with API_TOKEN set")
        if not bearer_ok(headers.get("authorization"), token):
            return Refusal(401, "missing or wrong bearer token", (("www-authenticate", 'Bearer realm="regimes"'),))
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            return Refusal(400, "Content-Length must be a number of bytes")
        if int(length) > max_body:
            return Refusal(413, f"request body over {max_body} bytes (API_MAX_BODY_BYTES)")
    return None


# --------------------------------------------------------------------------- metrics


class ApiMetrics:
    """dashboard_api's own metrics, in the service's registry (the shared ones are there already)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "regimes_api_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=registry,
        )
        self.seconds = Histogram(
            "regimes_api_request_seconds", "Time to answer a request (the live stream excluded), s",
            ["route", "method"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.sse_clients = Gauge("regimes_api_sse_clients", "Clients connected to /api/stream", registry=registry)
        self.sse_refused = Counter(
            "regimes_api_sse_refused", "Stream clients refused with 503, by reason", ["reason"], registry=registry
        )
        self.redis_errors = Counter(
            "regimes_api_redis_errors", "Redis errors met, by where (request, readiness, changes)", ["where"],
            registry=registry,
        )


def route_label(scope: Scope, routes: Collection[Any]) -> str:
    """The route template a request went to (or would have: refused ones never reach the router)."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    for candidate in routes:
        path = getattr(candidate, "path", None)
        if isinstance(path, str) and path and candidate.matches(scope)[0] is not Match.NONE:
            return path
    return UNMATCHED


class Edge:
    """Security headers on every response, and each request counted and timed under its route template."""

    def __init__(
        self,
        metrics: ApiMetrics,
        routes: Callable[[], Collection[Any]],
        docs_paths: Callable[[], Collection[str]],
        untimed: Collection[str] = (),
    ) -> None:
        self.metrics = metrics
        self._routes = routes
        self._docs = docs_paths
        self._untimed = frozenset(untimed)  # long-lived routes (the event stream): counted, not timed

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        extra = security_headers(scope["path"], self._docs())
        status = 500  # what the client gets when the app fails before answering

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                have = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((k, v) for k, v in extra if k not in have)]
            await send(message)

        try:
            await app(scope, receive, send_with_headers)
        finally:
            route = route_label(scope, self._routes())
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            if route not in self._untimed:
                self.metrics.seconds.labels(route, method).observe(time.perf_counter() - start)


class BodyGuard:
    """Refuses, from the headers alone, an operator request without its token and any body over the limit."""

    def __init__(
        self, app: ASGIApp, token: str | None, max_body: int, operator_paths: Collection[str] = ("/api/backfill",)
    ) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.operator_paths = frozenset(operator_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy's prefix: the path the routes see
            path = path[len(root) :] or "/"
        refusal = admit(path, Headers(scope=scope), self.token, self.max_body, self.operator_paths)
        if refusal is not None:
            await _refuse(send, refusal)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        """``receive`` that stops a body sent without (or beyond) its Content-Length once it passes the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise HTTPException(413, f"request body over {self.max_body} bytes (API_MAX_BODY_BYTES)")
            return message

        return counted


async def _refuse(send: Send, refusal: Refusal) -> None:
    body = json.dumps({"detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read: the connection cannot carry another request after this answer.
        (b"connection", b"close"),
        *((k.encode(), v.encode()) for k, v in refusal.headers),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

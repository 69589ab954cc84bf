"""ASGI middleware in front of every API route: bearer-token auth, body size limit, request media type.

It answers before BentoML parses anything, so an oversized, unauthenticated or non-multipart request never reaches
the form parser (whose failures BentoML would report as 500).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes and metrics scrapers carry no token; the API documentation is public too.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/", "/docs.json", "/schema.json"})
ADMIN_PREFIX = "/admin/"


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Refuse requests that must not reach the API methods.

    Args:
        app: the BentoML ASGI app.
        token: bearer token every API call must carry; None leaves the API open (admin routes then refuse all).
        max_body_bytes: larger bodies get 413, checked on `Content-Length` and while streaming.
        upload_paths: routes that take multipart uploads; any other body media type gets 415.
        internal_paths: routes the service calls on itself without a token (they only answer for random keys
            the same process issued a moment before, so a caller without the key learns nothing).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body_bytes: int,
        upload_paths: frozenset[str],
        internal_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.upload_paths = upload_paths
        self.internal_paths = internal_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("OPTIONS", "HEAD"):
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if path in OPEN_PATHS or path.startswith("/docs"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._auth_refusal(path, headers.get("authorization", ""))
        if refusal is not None:
            status, message = refusal
            await send_json(send, status, {"error": message}, {"www-authenticate": "Bearer"})
            return
        declared_length = headers.get("content-length", "")
        if declared_length.isdigit() and int(declared_length) > self.max_body_bytes:
            await send_json(send, 413, {"error": self._too_large(int(declared_length))})
            return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if path in self.upload_paths and scope["method"] == "POST" and media_type != "multipart/form-data":
            await send_json(
                send,
                415,
                {"error": f"{path} takes multipart/form-data uploads, not {media_type or 'a body without a type'}"},
            )
            return
        await self._limited(scope, receive, send)

    def _auth_refusal(self, path: str, authorization: str) -> tuple[int, str] | None:
        if path in self.internal_paths:
            return None
        if self.token is None:
            if path.startswith(ADMIN_PREFIX):
                return 403, "admin calls are disabled: set TUMOROPS_SERVING_TOKEN to enable them"
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return 401, "missing bearer token: send 'Authorization: Bearer <token>'"
        if not secrets.compare_digest(presented.strip().encode(), self.token.encode()):
            return 401, "invalid bearer token"
        return None

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_body_bytes} bytes"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer the body up to the limit (chunked uploads carry no Content-Length), then hand it on."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_json(send, 413, {"error": self._too_large(size)})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

"""A load generator that costs little CPU: asyncio sockets replaying one pre-encoded HTTP/1.1 request.

Each client keeps one connection open and sends the next request as soon as the previous answer is read, so
`clients` is the number of requests in flight. Only the status line and headers are parsed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def multipart_request(
    url: str, *, field_name: str, filename: str, data: bytes, media_type: str, token: str | None = None
) -> bytes:
    """The bytes of one `POST url` with a single multipart file field."""
    parts = urlsplit(url)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


@dataclass
class LoadResult:
    """Requests sent during a load run, by outcome, with latencies of the successful ones."""

    seconds: float
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    bodies: Counter = field(default_factory=Counter)  # distinct marker values seen in 200 bodies (see `marker`)
    errors: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _client(
    host: str, port: int, request: bytes, deadline: float, result: LoadResult, marker: bytes | None
) -> None:
    reader = writer = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
            body = await reader.readexactly(length)
            result.statuses[status] += 1
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
                if marker is not None and marker in body:
                    # e.g. marker b'"model_version":"' counts answers per served version
                    start = body.index(marker) + len(marker)
                    result.bodies[body[start : body.index(b'"', start)].decode()] += 1
            if any(line.lower() == "connection: close" for line in lines):
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as error:
            result.errors[type(error).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


def run_load(url: str, request: bytes, *, clients: int, seconds: float, marker: bytes | None = None) -> LoadResult:
    """Keep `clients` requests in flight against `url`'s host for `seconds`."""
    parts = urlsplit(url)
    result = LoadResult(seconds=seconds)

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _client(parts.hostname or "127.0.0.1", parts.port or 80, request, deadline, result, marker)
                for _ in range(clients)
            )
        )

    started = time.perf_counter()
    asyncio.run(main())
    result.seconds = time.perf_counter() - started
    return result

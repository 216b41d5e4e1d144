"""Sending webhook deliveries: one signed POST each, on a thread (the standard library's HTTP
client; a delivery per job end needs no more). Redirects are not followed: a receiver that
moved must be set again."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from typing import Any

from backstock.domain.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMEOUT_SECONDS,
    Due,
    signature,
)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
_AGENT = f"backstock/{version('backstock')}"


def _post(due: Due) -> tuple[int | None, str | None]:
    request = urllib.request.Request(  # noqa: S310 - the operator sets http(s) URLs only
        due.url,
        data=due.payload,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": _AGENT,
            SIGNATURE_HEADER: signature(due.secret, int(time.time()), due.payload),
            DELIVERY_HEADER: str(due.pk),
        },
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code} {exc.reason}"[:200]
    except (OSError, ValueError) as exc:  # URLError, refused, timed out, a bad URL
        return None, f"{type(exc).__name__}: {exc}"[:200]


async def post(due: Due) -> tuple[int | None, str | None]:
    return await asyncio.to_thread(_post, due)

"""The ceiling: a raw ASGI app that does no work. GET answers a tiny JSON document; POST reads
the whole body (the same ~40 KB) and answers 202. What the server and the load generator can
do at best on this machine, before any parsing or database."""

from __future__ import annotations

from bench.rawasgi import App, Receive, Scope, Send, lifespan, nothing, read_body, respond

_OK = b'{"status":"ok"}'
_ACCEPTED = b'{"data":{"type":"job","id":"1"}}'


def create() -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send, nothing, nothing)
            return
        if scope["method"] == "POST":
            await read_body(receive)
            await respond(send, 202, _ACCEPTED)
        else:
            await respond(send, 200, _OK)

    return app

"""Serve an ASGI app factory the way ``backstock serve`` does (``run_granian``), or with
uvicorn for the comparison of servers.

    python -m bench.serve granian|uvicorn module:factory --port P [--workers N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("server", choices=("granian", "uvicorn"))
    parser.add_argument("target")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.server == "granian":
        from backstock.cli import run_granian
        from backstock.settings import Settings

        run_granian(
            args.target, "127.0.0.1", args.port, args.workers,
            Settings.model_fields["header_timeout_seconds"].default,
            Settings.model_fields["stop_timeout_seconds"].default,
        )  # fmt: skip
    else:
        import uvicorn

        uvicorn.run(
            args.target,
            host="127.0.0.1",
            port=args.port,
            workers=args.workers,
            factory=True,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )


if __name__ == "__main__":
    main()

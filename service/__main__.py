"""Command line: python -m service (or tinyserve) [--host HOST] [--port PORT]."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="tinyserve",
        description="Serve the tinyserve models over HTTP with LitServe. Settings are read from TINYSERVE_* "
        "environment variables (see README.md); the flags below override them.",
    )
    parser.add_argument("--host", help="address to listen on: 127.0.0.1, 0.0.0.0 or :: (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port, 1024-65535 (default 8000)")
    args = parser.parse_args(argv)

    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        parser.error(str(error))

    # Imported here, not at the top: torch and LitServe take seconds to import, and --help or a bad
    # setting should answer at once.
    from service.runtime.lifecycle import serve

    try:
        serve(settings)
    except KeyboardInterrupt:
        pass  # Ctrl+C, or SIGTERM before start-up finished: serve() has already stopped what it started


if __name__ == "__main__":
    main()

"""`python -m service.healthcheck`: exit 0 when this container's server answers /health with 200, else 1.

The container healthcheck (Dockerfile, compose) runs this: slim images have no curl, and it must follow
TINYSERVE_PORT. It imports only the standard library, since it runs every few seconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping


def health_url(environ: Mapping[str, str] = os.environ) -> str:
    """The loopback URL of /health for the server configured by this environment."""
    port = environ.get("TINYSERVE_PORT", "8000")
    # A server bound to `::` is reached on the IPv6 loopback; 0.0.0.0 and 127.0.0.1 on the IPv4 one.
    host = "[::1]" if environ.get("TINYSERVE_HOST") == "::" else "127.0.0.1"
    return f"http://{host}:{port}/health"


def main() -> int:
    try:
        with urllib.request.urlopen(health_url(), timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:  # 503 while loading arrives as HTTPError, a URLError
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

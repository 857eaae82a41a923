"""infergate for the HTTP benchmark: the engine as shipped plus a 13-byte ``GET /hello``.

Usage: python bench/infergate_app.py PORT MODE   (MODE: handoff or reuseport)
"""

import sys
from pathlib import Path

from infergate.engine.config import Limits, ServerConfig
from infergate.engine.http.response import Response
from infergate.engine.server import Server

ROOT = Path(__file__).resolve().parent.parent
HELLO = Response(b"Hello, World!", 200, b"text/plain")


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    config = ServerConfig(
        listen=f"127.0.0.1:{port}",
        admin_listen="",
        sub_reactors=1,
        accept_mode=mode,  # type: ignore[arg-type]
        limits=Limits(max_pipelined=256),
    )
    server = Server(config, str(ROOT / "public"))
    server.router.add(["GET"], "/hello", lambda _req: HELLO)
    server.run(on_ready=lambda: print(f"infergate listening on {port}", flush=True))


if __name__ == "__main__":
    main()

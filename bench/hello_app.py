"""A bare FastAPI hello world, served as the gateway is served: the HTTP ceiling of the machine.

``python -m bench.hello_app --port P [--log-level warning]`` runs ``uvicorn.run`` with the
arguments ``batchline web`` gives it (:func:`batchline.cli.cmd_web`): one process, uvicorn's
``auto`` event loop and HTTP implementation (uvloop and httptools when installed), the access
log on (silent below INFO), a 5 s graceful shutdown. No middleware, no dependencies, no Redis.

``POST /hello`` reads the request body (the gateway's endpoints read theirs) and answers a
small JSON object; ``GET /hello`` answers the same without a body.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, Request

app = FastAPI(title="hello")


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.post("/hello")
async def hello_post(request: Request) -> dict[str, str]:
    await request.body()
    return {"hello": "world"}


def serve(app: str, prog: str) -> None:
    """``uvicorn.run(app)`` as ``batchline web`` runs the gateway, on the command line's
    ``--host``, ``--port`` and ``--log-level`` (shared by the bench's plain apps)."""
    import uvicorn

    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_level=args.log_level.lower(),
        access_log=True,
        timeout_graceful_shutdown=5,
    )


def main() -> None:
    serve("bench.hello_app:app", "python -m bench.hello_app")


if __name__ == "__main__":
    main()

"""The HTTP ceiling's server: `python -m bench.ceiling_http PORT`.

A minimal FastAPI endpoint under uvicorn with the gateway's server settings, that only reads the body:
what any FastAPI/uvicorn webhook receiver on this machine can do at best.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/webhook")
async def receive(request: Request) -> dict[str, int]:
    body = await request.body()
    return {"bytes": len(body)}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    uvicorn.run(app, host="127.0.0.1", port=int(args[0]), log_level="warning", ws="websockets-sansio")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The polling yardstick: a minimal Starlette app whose one handler does the same primary-key
SELECT as `GET /v1/jobs/{id}` and returns the row as JSON. Same server (uvicorn, one process),
same kind of handler (sync, in the threadpool), same pool size as gmiq's API, and, like gmiq's
reads, in autocommit: one round trip per request (`engine.connect()` alone would add a BEGIN
and a ROLLBACK).

Run: `python -m bench.minimal_api --port P` with GMIQ_DATABASE_URL (and GMIQ_DB_POOL_SIZE).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence

import orjson
import uvicorn
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.settings import Settings

_SELECT = text("SELECT * FROM job WHERE id = :id")


def create_minimal_app(database_url: str, pool_size: int) -> Starlette:
    """One route: the job row by id, or 404."""
    engine = create_engine(database_url, pool_size=pool_size, isolation_level="AUTOCOMMIT")

    def get_job(request: Request) -> Response:
        try:
            job_id = uuid.UUID(request.path_params["job_id"])
        except ValueError:
            return Response(b'{"error":"not_found"}', 404, media_type="application/json")
        with engine.connect() as connection:
            row = connection.execute(_SELECT, {"id": job_id}).mappings().first()
        if row is None:
            return Response(b'{"error":"not_found"}', 404, media_type="application/json")
        return Response(orjson.dumps(dict(row)), media_type="application/json")

    return Starlette(routes=[Route("/v1/jobs/{job_id}", get_job, methods=["GET"])])


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the minimal app on the loopback."""
    parser = argparse.ArgumentParser(prog="python -m bench.minimal_api")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    app = create_minimal_app(settings.sqlalchemy_url, settings.db_pool_size)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

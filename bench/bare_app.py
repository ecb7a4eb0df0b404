"""The floor of bench/load_bench.py: the least a server can do to answer GET /patients/<id> from the same MariaDB.

Flask + PyMySQL, no ORM, no token, no tenant routing, no audit, no decryption, no EMPI look-up: one primary-key
SELECT of the shard's `patients` row joined to `bench_floor_patients`, where load_bench.py stored at setup the
exact JSON body the real API answered for that patient, returned as it is. One keep-alive PyMySQL connection per
server thread (autocommit). Served by the same gunicorn settings as `hie serve` (load_bench.py starts it):

    HIE_FLOOR_DB_URL=mysql+pymysql://root@127.0.0.1:3306/hie_lbench_yaodu \
        .venv/bin/gunicorn --chdir . -k gthread --workers 5 --threads 4 bench.bare_app:app
"""

from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit

import pymysql
from flask import Flask, Response, abort

QUERY = ("SELECT f.body FROM patients p JOIN bench_floor_patients f ON f.id = p.id WHERE p.id = %s")

app = Flask(__name__)
_local = threading.local()


def _params(url: str) -> dict[str, object]:
    """PyMySQL's connect() arguments from a SQLAlchemy-style URL (mysql+pymysql://user:pw@host:port/db)."""
    parts = urlsplit(url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306, "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""), "database": parts.path.lstrip("/"), "charset": "utf8mb4",
            "autocommit": True}


def _connection() -> pymysql.connections.Connection:
    """This thread's connection, opened on first use and kept, as a pool would keep it."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = pymysql.connect(**_params(os.environ["HIE_FLOOR_DB_URL"]))
        _local.connection = connection
    return connection


@app.get("/healthz")
def healthz() -> Response:
    """A trivial answer: the ceiling of the client and gunicorn together."""
    return Response("ok", mimetype="text/plain")


@app.get("/patients/<patient_id>")
def patient(patient_id: str) -> Response:
    """The stored copy of the real API's answer, read with the patients row."""
    with _connection().cursor() as cursor:
        cursor.execute(QUERY, (patient_id,))
        row = cursor.fetchone()
    if row is None:
        abort(404)
    return Response(row[0], mimetype="application/json")

"""Give each pytest-xdist worker its own Redis database, before Django reads its settings.

`python3 run.py test` runs the whole suite in two processes (pytest-xdist). pytest-django gives each its
own PostgreSQL test database (`test_teachback_gw0`, `..._gw1`); Redis needs the same, because fixtures
flush their Redis database and a Celery worker started by one process must not take the other's tasks.
Worker `gwN` uses database `D - N`, where `D` is the database of `REDIS_URL` (15 by default, so 15 and
14). This module is loaded with `-p` (pyproject.toml), which imports it before pytest-django loads the
settings; a conftest would be too late.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    _url = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    _base = int(_url.path.strip("/") or 0)
    _db = _base - int(_worker[2:])
    if _db < 0:
        raise RuntimeError(f"REDIS_URL database {_base} leaves no Redis database for xdist worker {_worker}")
    os.environ["REDIS_URL"] = urlunsplit(_url._replace(path=f"/{_db}"))

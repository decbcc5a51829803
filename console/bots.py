"""The launch checklist's "Run 10 bots": simulated participants sent through the live study over HTTP.

A worker runs `participants.bots.bot_run` against the site's own base URL (taken from the request
that started the run), so the bots go through exactly what a participant's browser goes through. A
run's progress lives in the cache (Redis) under its run id, for the study page to poll; the bots
themselves are ordinary simulated participants (`is_simulated`) in the database.
"""
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from participants.bots import AnswerPolicy, bot_run
from studies.audit import audit_record
from studies.models import Study, StudyVersion
from studies.selectors import entry_link_token, study_version_open, study_version_protocol

BOTS_PER_RUN = 10
RUN_TTL_S = 24 * 3600
MAX_ERRORS_KEPT = 20


class BotsRefused(Exception):
    """The study cannot take bots now; the message says why."""


def _key(run_id: str) -> str:
    return f"console:bots:run:{run_id}"


def _latest_key(study_id: int) -> str:
    return f"console:bots:latest:{study_id}"


def bots_run_start(*, actor, study: Study, base_url: str, n: int = BOTS_PER_RUN) -> dict:
    """Queue a run of `n` bots against `base_url`; return its initial state. Needs a live version."""
    from .tasks import bots_run_task

    version = study_version_open(slug=study.slug)
    if version is None or version.state != StudyVersion.State.LIVE:
        raise BotsRefused("Bots need a live version: launch (or resume) the study first.")
    run_id = secrets.token_hex(8)
    state = {
        "run": run_id, "slug": study.slug, "version": version.number, "state": "queued", "total": n, "done": 0,
        "completed": 0, "with_code": 0, "failed": 0, "errors": [], "by": getattr(actor, "username", ""),
        "queued_at": timezone.now().isoformat(), "finished_at": None, "seconds": None,
    }
    with transaction.atomic():
        audit_record(actor=actor, action="bots_run", study_slug=study.slug, object_type="bots_run",
                     object_id=run_id, after={"bots": n, "version": version.number})
        cache.set(_key(run_id), state, RUN_TTL_S)
        cache.set(_latest_key(study.pk), run_id, RUN_TTL_S)
        transaction.on_commit(lambda: bots_run_task.delay(run_id, study.slug, base_url.rstrip("/"), n))
    return state


def bots_run_get(*, study: Study, run_id: str) -> dict | None:
    """Return a run's state if it is a run of this study."""
    state = cache.get(_key(run_id))
    return state if state and state.get("slug") == study.slug else None


def bots_run_latest(*, study: Study) -> dict | None:
    run_id = cache.get(_latest_key(study.pk))
    return bots_run_get(study=study, run_id=run_id) if run_id else None


def bots_run(*, run_id: str, slug: str, base_url: str, n: int, policy: str = "random") -> dict:
    """Send the bots of a queued run and keep its state current in the cache (the worker's side)."""
    state = cache.get(_key(run_id))
    if state is None or state["state"] != "queued":  # expired, or already run: never send the bots twice
        return state or {}
    started = time.monotonic()
    state["state"] = "running"
    cache.set(_key(run_id), state, RUN_TTL_S)
    version = study_version_open(slug=slug)
    connection.close()  # the bots talk HTTP for a minute or more: hold no database connection meanwhile
    if version is None or version.state != StudyVersion.State.LIVE:
        return _finish(state, started, error="the study is not live any more")
    protocol = study_version_protocol(version)
    token = entry_link_token(slug=slug, kind="simulated")
    code = version.spec["recruitment"]["completion_code"]
    rng = random.Random()
    policies = [AnswerPolicy(policy, protocol, version.target_keys, random.Random(rng.random())) for _ in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(bot_run, base_url=base_url, slug=slug, policy=p, link_token=token) for p in policies]
        for future in as_completed(futures):  # one thread updates the state: no lost updates
            try:
                result = future.result()
                error = result.error
            except Exception as exc:  # a bot's HTTP failure is its result, reported on the page
                result, error = None, f"{type(exc).__name__}: {exc}"
            state["done"] += 1
            if result is not None and result.completed:
                state["completed"] += 1
                state["with_code"] += code in result.finish_url
            else:
                state["failed"] += 1
                if len(state["errors"]) < MAX_ERRORS_KEPT:
                    state["errors"].append(error or "did not finish")
            cache.set(_key(run_id), state, RUN_TTL_S)
    return _finish(state, started)


def _finish(state: dict, started: float, *, error: str = "") -> dict:
    if error:
        state["errors"].append(error)
    state["state"] = "failed" if error else "done"
    state["finished_at"] = timezone.now().isoformat()
    state["seconds"] = round(time.monotonic() - started, 1)
    cache.set(_key(state["run"]), state, RUN_TTL_S)
    return state

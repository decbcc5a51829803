"""The monitor's numbers as the pages serve them: recomputed by a worker, kept a few seconds in the cache.

Counting a large study (10 000 participants, 200 000 turns) takes the database a few hundred milliseconds
(docs/benchmarks.md), too long for a fragment that every open monitor polls every 5 s. So a request reads
the last numbers from the cache (Redis): younger than FRESH_S, they are served as they are; older, they
are still served (the page says "as of" when) and one worker task is queued to recompute them, so the next
poll gets new ones; with none in the cache, or none younger than STALE_S (no worker answered), the request
computes them itself. The numbers are never more than about one poll behind while a worker runs.
The scheduler's last runs (`scheduler`) are read anew on every request: one cache round trip, and a stopped
scheduler must turn the page red at the next poll, not after the cached numbers expire.
"""
import time

from django.core.cache import cache
from django.db import transaction

from analysis.monitor import scheduler_status, study_monitor
from studies.models import Study

FRESH_S = 4     # served as they are; the pages poll every 5 s, so each poll asks for a refresh
STALE_S = 30    # older than this, the request computes the numbers itself (a worker should have)
KEEP_S = 300    # how long a study's numbers stay in the cache once nobody watches


def cache_key(study: Study) -> str:
    """The study's key; its creation time is in it so that a database made anew (tests, a reset demo)
    never meets the numbers of the study that had the same id before."""
    return f"console:monitor:{study.pk}:{study.created_at.timestamp():.6f}"


def monitor_get(*, study: Study) -> dict:
    """Return the study's monitor numbers, at most FRESH_S old, or STALE_S while a worker recomputes them,
    with the scheduler's last runs as of now."""
    return {**_numbers(study), "scheduler": scheduler_status()}


def _numbers(study: Study) -> dict:
    key = cache_key(study)
    cached = cache.get(key)
    if cached is not None:
        age = time.time() - cached["computed_at"]
        if age < FRESH_S:
            return cached["numbers"]
        if age < STALE_S:
            if cache.add(f"{key}:queued", 1, timeout=STALE_S):  # one refresh at a time
                from .tasks import monitor_refresh_task

                transaction.on_commit(lambda: monitor_refresh_task.delay(study.pk))
            return cached["numbers"]
    return _compute(study)


def monitor_refresh(*, study_id: int) -> None:
    """Recompute a study's monitor numbers into the cache (the worker's side)."""
    study = Study.objects.filter(pk=study_id).first()
    if study is not None:
        _compute(study)
        cache.delete(f"{cache_key(study)}:queued")


def _compute(study: Study) -> dict:
    numbers = study_monitor(study=study)
    cache.set(cache_key(study), {"computed_at": time.time(), "numbers": numbers}, timeout=KEEP_S)
    return numbers

"""When each periodic task of the beat schedule (settings.CELERY_BEAT_SCHEDULE) last ran.

One cache key per task (Redis, under the deployment's namespace like every key), written by the task
each time it finishes a run and read by the researcher's monitor (analysis.monitor.scheduler_status).
The cache, not a table: the frequent tasks write every few seconds, and a record lost with a Redis
restart without persistence comes back at the task's next run (the sweeper's within seconds).
"""
import time

from django.conf import settings
from django.core.cache import cache

KEY = "scheduler:last-run:{task}"


def periodic_run_record(*, task: str) -> None:
    """Record that the periodic task named `task` (its Celery name) has just finished a run."""
    cache.set(KEY.format(task=task), time.time(), timeout=None)


def periodic_runs_last() -> dict[str, float | None]:
    """Return the Unix time of the last run of each task of the beat schedule (None: no run recorded)."""
    tasks = sorted({entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()})
    found = cache.get_many([KEY.format(task=task) for task in tasks])
    return {task: found.get(KEY.format(task=task)) for task in tasks}

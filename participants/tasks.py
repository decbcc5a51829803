"""Periodic work on participants (CELERY_BEAT_SCHEDULE): the study cost caps and the retention of PID hashes."""
from celery import shared_task

from explainers.periodic import periodic_run_record

from . import services


@shared_task
def budgets_check_task() -> int:
    """Pause every live study whose LLM calls have reached its cost cap (every 15 s)."""
    paused = services.budgets_check()
    periodic_run_record(task=budgets_check_task.name)  # the monitor shows it, and turns red when it stops
    return paused


@shared_task
def pid_hashes_expire_task() -> int:
    """Clear the PID and session hashes of participants who finished PID_HASH_RETENTION_DAYS ago (daily)."""
    cleared = services.participant_identifiers_expire()
    periodic_run_record(task=pid_hashes_expire_task.name)
    return cleared

"""Periodic work on participants (CELERY_BEAT_SCHEDULE): the study cost caps and the retention of PID hashes."""
from celery import shared_task

from . import services


@shared_task
def budgets_check_task() -> int:
    """Pause every live study whose LLM calls have reached its cost cap (every 15 s)."""
    return services.budgets_check()


@shared_task
def pid_hashes_expire_task() -> int:
    """Clear the PID and session hashes of participants who finished PID_HASH_RETENTION_DAYS ago (daily)."""
    return services.participant_identifiers_expire()

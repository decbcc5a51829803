from celery import shared_task
from django.conf import settings

from . import services


@shared_task(
    bind=True, acks_late=True, max_retries=None,
    soft_time_limit=settings.REPLY_SOFT_LIMIT_S, time_limit=settings.REPLY_HARD_LIMIT_S,
)
def reply_generate_task(self, turn_id: int) -> str:
    """Make one attempt at the reply to a turn; come back after the backoff when it can clear."""
    outcome = services.reply_generate(turn_id=turn_id)
    if outcome.state == "retry" or (outcome.state == "busy" and not self.request.is_eager):
        raise self.retry(countdown=min(outcome.retry_in_s, settings.REPLY_MAX_COUNTDOWN_S))
    return outcome.state


@shared_task
def turns_sweep_task() -> int:
    return len(services.turns_sweep())

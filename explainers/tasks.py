from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import services
from .periodic import periodic_run_record

# A countdown, so like every countdown below the visibility timeout (config/settings.py): the message
# waits in the worker unacknowledged, and one that outlived the visibility timeout would run twice.
DB_RETRY_S = 5


@shared_task(
    bind=True, acks_late=True, max_retries=None,
    soft_time_limit=settings.REPLY_SOFT_LIMIT_S, time_limit=settings.REPLY_HARD_LIMIT_S,
)
def reply_generate_task(self, turn_id: int) -> str:
    """Make one attempt at the reply to a turn; come back after the backoff when it can clear."""
    try:
        outcome = services.reply_generate(turn_id=turn_id)
    except (OperationalError, InterfaceError) as error:
        # The database refused (too many clients, a restart): the turn is still pending, so come back
        # soon rather than leave it to the sweeper.
        raise self.retry(exc=error, countdown=DB_RETRY_S) from error
    if outcome.state == "continue":  # an agentic turn's next call: a delivery of its own (one attempt each)
        raise self.retry(countdown=0)
    if outcome.state == "retry" or (outcome.state == "busy" and not self.request.is_eager):
        raise self.retry(countdown=min(outcome.retry_in_s, settings.REPLY_MAX_COUNTDOWN_S))
    return outcome.state


@shared_task(
    bind=True, acks_late=True, max_retries=None,
    soft_time_limit=settings.REPLY_SOFT_LIMIT_S, time_limit=settings.REPLY_HARD_LIMIT_S,
)
def conversation_wrapup_task(self, conversation_id: int) -> str:
    """The agentic arm's end-of-step calls (post-test predictions, the note), one per delivery."""
    try:
        outcome = services.conversation_wrapup(conversation_id=conversation_id)
    except (OperationalError, InterfaceError) as error:
        raise self.retry(exc=error, countdown=DB_RETRY_S) from error
    if outcome.state == "continue":
        raise self.retry(countdown=0)
    if outcome.state == "busy" and not self.request.is_eager:
        raise self.retry(countdown=min(outcome.retry_in_s, settings.REPLY_MAX_COUNTDOWN_S))
    return outcome.state


@shared_task
def turns_sweep_task() -> int:
    """Queue again the turns left without a reply (every TURN_SWEEP_EVERY_S, from beat)."""
    requeued = len(services.turns_sweep())
    periodic_run_record(task=turns_sweep_task.name)  # the monitor shows it, and turns red when it stops
    return requeued

"""The timing budget of a reply (config/settings.py, docs/chat.md "The timing budget"), checked on the real
settings, with every constant read from the code that uses it.

Exactly one reply rests on a lease, not on the broker: a worker holds a Redis lease on its turn while its
call is alive (a heartbeat renews it whether or not data arrives), and the sweeper re-queues a pending
turn whose lease has expired. So a dead worker's turn is queued again within LEASE_TTL_S +
TURN_SWEEP_EVERY_S, which must stay within the issue's 30 s; and the broker's visibility timeout must be
longer than any delivery, so that a healthy task is never handed to a second worker mid-call.
"""
from django.conf import settings

from config.celery import app
from explainers import providers, services
from explainers.tasks import DB_RETRY_S, conversation_wrapup_task, reply_generate_task
from studies.spec import LLM_IDLE_DEFAULT_S, LLM_TIMEOUT_DEFAULT_S, LLM_TIMEOUT_MAX_S

ATTEMPTS_PER_DELIVERY = 1
DB_AND_STREAM_MARGIN_S = 30  # the reads before the call and the writes after it, on a busy database
REQUEUE_BOUND_S = 30  # issue 12: a dead worker's turn is queued again within 30 s


def visibility_timeout() -> float:
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]


def test_a_dead_workers_turn_is_requeued_within_30_s():
    # the lease outlives its worker by at most LEASE_TTL_S; the next sweep then re-queues the turn
    assert settings.LEASE_TTL_S + settings.TURN_SWEEP_EVERY_S <= REQUEUE_BOUND_S
    assert settings.CELERY_BEAT_SCHEDULE["turns-sweep"]["schedule"] == settings.TURN_SWEEP_EVERY_S


def test_the_heartbeat_renews_the_lease_several_times_per_ttl():
    # a live call keeps its lease through one late beat (a busy core, a slow Redis round trip)
    assert 0 < settings.LEASE_RENEW_EVERY_S * 3 <= settings.LEASE_TTL_S


def test_services_use_the_settings_lease_not_a_copy_of_their_own():
    for name in ("LEASE_TTL_S", "LEASE_RENEW_EVERY_S"):
        assert getattr(services, name, getattr(settings, name)) == getattr(settings, name), name


def test_the_longest_attempt_fits_the_soft_limit_which_fits_the_hard_limit_which_fits_the_visibility_timeout():
    assert LLM_TIMEOUT_MAX_S >= 300  # issue 12: limits up to at least 300 s
    assert LLM_TIMEOUT_MAX_S * ATTEMPTS_PER_DELIVERY + DB_AND_STREAM_MARGIN_S <= settings.REPLY_SOFT_LIMIT_S
    assert settings.REPLY_SOFT_LIMIT_S < settings.REPLY_HARD_LIMIT_S < visibility_timeout()
    for task in (reply_generate_task, conversation_wrapup_task):  # the tasks really carry those limits
        assert task.soft_time_limit == settings.REPLY_SOFT_LIMIT_S, task.name
        assert task.time_limit == settings.REPLY_HARD_LIMIT_S, task.name
        assert task.acks_late is True, task.name


def test_every_countdown_is_shorter_than_the_visibility_timeout():
    # a countdown (ETA) waits in the worker unacknowledged: one longer than the visibility timeout runs twice
    assert settings.REPLY_MAX_COUNTDOWN_S < visibility_timeout()
    assert DB_RETRY_S < visibility_timeout()
    assert providers.BACKOFF_CAP_S <= settings.REPLY_MAX_COUNTDOWN_S  # the backoff is not silently cut


def test_a_turn_waiting_out_its_backoff_is_not_taken_for_a_lost_message():
    assert settings.REPLY_MAX_COUNTDOWN_S < settings.TURN_SWEEP_STALE_S
    assert DB_RETRY_S < settings.TURN_SWEEP_STALE_S


def test_the_default_limits_are_inside_the_maximum():
    assert 0 < LLM_IDLE_DEFAULT_S <= LLM_TIMEOUT_DEFAULT_S <= LLM_TIMEOUT_MAX_S


def test_the_kombu_transport_receives_the_options():
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    with app.connection_for_write() as connection:
        for key, value in options.items():
            assert connection.transport_options[key] == value, key
        channel = connection.default_channel  # the Redis channel applies them
        assert channel.visibility_timeout == visibility_timeout()

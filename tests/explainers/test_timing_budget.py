"""The timing budget of a reply (config/settings.py, docs/chat.md), checked on the real settings.

One provider attempt per task delivery, so the longest delivery is one attempt (at most the study
file's maximum timeout) plus the reads and writes around it. That must end before the task's limits,
the limits before the broker's visibility timeout (or a live task's message is handed to a second
worker), and a dead worker's message must come back within 30 s. The threads pool does not enforce
Celery's time limits: the provider's own deadline (`timeout_s`) is what really bounds an attempt.
"""
from django.conf import settings

from config.celery import app
from explainers import services
from explainers.tasks import reply_generate_task
from studies.spec import LLM_TIMEOUT_MAX_S

ATTEMPTS_PER_DELIVERY = 1
DB_AND_STREAM_MARGIN_S = 3


def transport() -> dict:
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS


def test_one_attempt_fits_the_soft_limit_which_fits_the_hard_limit_which_fits_the_visibility_timeout():
    assert LLM_TIMEOUT_MAX_S * ATTEMPTS_PER_DELIVERY + DB_AND_STREAM_MARGIN_S <= settings.REPLY_SOFT_LIMIT_S
    assert settings.REPLY_SOFT_LIMIT_S < settings.REPLY_HARD_LIMIT_S < transport()["visibility_timeout"]
    # the task really carries those limits
    assert reply_generate_task.soft_time_limit == settings.REPLY_SOFT_LIMIT_S
    assert reply_generate_task.time_limit == settings.REPLY_HARD_LIMIT_S
    assert reply_generate_task.acks_late is True


def test_a_retry_countdown_is_shorter_than_the_visibility_timeout():
    # a countdown (ETA) longer than the visibility timeout is restored while it waits: the task runs twice
    assert settings.REPLY_MAX_COUNTDOWN_S < transport()["visibility_timeout"]
    assert services.BACKOFF_CAP_S <= settings.REPLY_MAX_COUNTDOWN_S  # the backoff is not silently cut


def test_a_killed_workers_message_comes_back_within_30_s():
    options = transport()
    assert options["visibility_timeout"] + options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 30


def test_a_dead_workers_lease_is_gone_before_its_message_comes_back():
    # services.reply_generate takes a lease of (attempt budget + 5 s); the attempt budget is the arm's
    # timeout_s, at most LLM_TIMEOUT_MAX_S. The lease is renewed while deltas stream, so a worker killed
    # late in a long stream can still hold it when the message is restored: that delivery answers
    # "busy" and the task looks again when the lease can have expired (it is not dropped).
    lease_ttl_s = LLM_TIMEOUT_MAX_S + 5
    options = transport()
    assert lease_ttl_s < options["visibility_timeout"] + options["unacked_restore_interval"]
    assert services.LEASE_RENEW_EVERY_S < lease_ttl_s


def test_the_sweeper_does_not_requeue_a_turn_whose_reply_is_still_in_time():
    # a pending turn is stale only after a whole delivery (and its restore) could have happened
    options = transport()
    assert settings.TURN_SWEEP_STALE_S > options["visibility_timeout"] + options["unacked_restore_interval"]


def test_the_kombu_transport_receives_the_options():
    with app.connection_for_write() as connection:
        options = connection.transport_options
        for key in ("visibility_timeout", "unacked_restore_interval", "unacked_restore_throttle"):
            assert options[key] == transport()[key], key
        channel = connection.default_channel  # the Redis channel applies them
        assert channel.visibility_timeout == transport()["visibility_timeout"]
        assert channel.unacked_restore_throttle == transport()["unacked_restore_throttle"]
        assert channel.unacked_restore_interval == transport()["unacked_restore_interval"]

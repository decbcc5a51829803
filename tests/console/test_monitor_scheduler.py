"""The monitor shows when the scheduler's periodic tasks last ran, and turns red when they stop."""
import time
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.core.cache import cache
from django.utils.module_loading import import_string

from analysis.monitor import LATE_MIN_S, LATE_PERIODS, scheduler_status
from explainers.periodic import KEY, periodic_runs_last
from pages_support import as_role, assert_strict_page  # noqa: F401

pytestmark = pytest.mark.django_db

MONITOR = "/console/loan-approval/monitor/"
TASKS = {name: entry["task"] for name, entry in settings.CELERY_BEAT_SCHEDULE.items()}


NOW = time.time()


def ran(name: str, seconds_ago: float) -> None:
    """Record a run of the beat entry `name` as if it happened `seconds_ago` before NOW."""
    cache.set(KEY.format(task=TASKS[name]), NOW - seconds_ago, timeout=None)


@pytest.fixture(autouse=True)
def _monitor_clock_at_now(monkeypatch):
    """The monitor reads the time once per page: pin it, so a slow page cannot change what it says."""
    monkeypatch.setattr("analysis.monitor.time", SimpleNamespace(time=lambda: NOW))


@pytest.fixture(autouse=True)
def _no_runs_recorded():
    keys = [KEY.format(task=task) for task in TASKS.values()]
    cache.delete_many(keys)
    yield
    cache.delete_many(keys)


def fragment(client) -> str:
    return assert_strict_page(client.get(f"{MONITOR}live/", headers={"HX-Request": "true"}), fragment=True)


@pytest.mark.django_db(transaction=True)  # the sweeper gives its connection back, as in a worker
def test_every_periodic_task_records_its_run():
    """Every entry of the beat schedule, run as beat would have it run, leaves its time for the monitor."""
    before = time.time()
    for task in TASKS.values():
        import_string(task).apply(throw=True)  # the task beat names, run here and now
    last = periodic_runs_last()
    assert set(last) == set(TASKS.values())
    for task, at in last.items():
        assert at is not None and before <= at <= time.time(), task


def test_the_monitor_shows_the_last_runs_and_stays_calm_while_they_are_on_time(live_study, as_role):
    ran("turns-sweep", 3)
    ran("budgets-check", 10)
    ran("pid-hashes-expire", 5 * 3600)
    html = assert_strict_page(as_role(live_study.study, "viewer").get(MONITOR))
    assert 'data-scheduled="turns-sweep" data-late="0"' in html and "the sweeper 3 s ago" in html
    assert 'data-scheduled="budgets-check" data-late="0"' in html and "the budget check 10 s ago" in html
    assert "the PID-hash retention 5 h ago" in html
    assert 'data-monitor-warning="scheduler_late"' not in html and "has not run" not in html


def test_the_monitor_turns_red_when_the_scheduler_stopped(live_study, as_role):
    for name in TASKS:
        ran(name, 12 * 60 + 5)
    html = fragment(as_role(live_study.study, "viewer"))
    assert 'class="banner error" role="alert" data-monitor-warning="scheduler_late"' in html
    assert ("The scheduler has not run for 12 minutes: replies whose worker died will not be retried and the "
            "studies&#x27; cost caps are not checked.") in html
    assert 'data-scheduled="turns-sweep" data-late="1"' in html
    assert 'data-scheduled="budgets-check" data-late="1"' in html
    assert 'data-scheduled="pid-hashes-expire" data-late="0"' in html  # daily: shown, never called late


def test_a_deployment_that_never_ran_a_scheduler_is_red(live_study, as_role):
    html = fragment(as_role(live_study.study, "owner"))
    assert "The scheduler has not run (no run recorded since Redis last started): replies whose worker died" in html
    assert "the sweeper no run recorded" in html


def test_red_at_the_next_poll_although_the_numbers_are_cached(live_study, as_role):
    """The study's numbers are cached for a few seconds; the scheduler's state is read on every poll."""
    client = as_role(live_study.study, "viewer")
    for name in TASKS:
        ran(name, 1)
    assert "has not run" not in fragment(client)
    ran("turns-sweep", 30 * 60)
    ran("budgets-check", 30 * 60)
    assert "The scheduler has not run for 30 minutes" in fragment(client)


def test_one_task_late_names_that_task_and_not_the_scheduler():
    ran("turns-sweep", 2)
    ran("budgets-check", 10 * 60 + 5)
    status = scheduler_status()
    assert status["late"] == ["budgets-check"]
    assert status["text"] == ("The budget check has not run for 10 minutes: the studies' cost caps are not "
                              "checked; see the beat and worker logs.")


def test_late_means_a_few_periods_and_at_least_a_minute():
    every = settings.CELERY_BEAT_SCHEDULE["turns-sweep"]["schedule"]
    bound = max(LATE_PERIODS * every, LATE_MIN_S)
    ran("budgets-check", 1)
    ran("turns-sweep", bound - 1)
    assert scheduler_status()["late"] == []
    ran("turns-sweep", bound + 1)
    assert scheduler_status()["late"] == ["turns-sweep"]

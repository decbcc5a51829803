"""Login throttling (console.logins): 200 wrong passwords cost a handful of password checks, a locked login
refuses even the right password without checking it, and an owner's action or time lifts the lock.

Password checks are counted at ModelBackend.authenticate, the one place a password is hashed; the clock
is console.logins._now, moved by the tests instead of sleeping.
"""
from datetime import datetime, timezone

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.test import Client, RequestFactory

from console import logins
from pages_support import PASSWORD, client_for, researcher
from studies.audit import audit_verify
from studies.models import AuditEvent, Membership, Study

pytestmark = pytest.mark.django_db

T0 = 1_900_000_000.0  # a fixed clock: the lock's end (and so its message) is the same for every account
LOCKED = "Too many failed logins"
WRONG = "Please enter a correct username and password"


@pytest.fixture
def clock(monkeypatch, settings):
    """A clock the test moves, the documented limits pinned, and no counters left from other tests."""
    settings.LOGIN_FAILURES_PER_ACCOUNT = 5
    settings.LOGIN_FAILURES_PER_IP = 1000
    settings.LOGIN_FAILURE_WINDOW_MINUTES = 15
    settings.LOGIN_LOCKOUT_MINUTES = 15
    # What is counted is whether a password is checked, not how long a check takes: a cheap hasher keeps
    # the tests fast on a busy machine (the real hasher's cost is what the lock saves, see docs/console.md).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    now = {"t": T0}
    monkeypatch.setattr(logins, "_now", lambda: now["t"])
    cache.clear()
    yield now
    cache.clear()


@pytest.fixture
def checks(monkeypatch):
    """Count the password checks (ModelBackend.authenticate hashes the password, for a made-up name too)."""
    calls = []
    real = ModelBackend.authenticate

    def counted(self, request, username=None, password=None, **kwargs):
        calls.append(username)
        return real(self, request, username=username, password=password, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counted)
    return calls


def post_login(client, username, password, url="/console/login/", **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def logged_in(client) -> bool:
    return client.get("/console/").status_code == 200


def test_200_wrong_passwords_are_checked_5_times_and_then_even_the_right_one_is_refused_unchecked(clock, checks):
    researcher("ada", password=PASSWORD)
    client = Client()
    pages = [post_login(client, "ada", f"guess-{n}") for n in range(20)]
    for n in range(20, 200):  # the rest straight at authenticate(), as the login form calls it (faster than pages)
        assert authenticate(RequestFactory().post("/console/login/"), username="ada", password=f"guess-{n}") is None
    assert len(checks) == 5
    assert all(WRONG in p.content.decode() for p in pages[:4])
    assert all(LOCKED in p.content.decode() and WRONG not in p.content.decode() for p in pages[4:])
    right = post_login(client, "ada", PASSWORD)
    assert right.status_code == 200 and LOCKED in right.content.decode()
    assert len(checks) == 5 and not logged_in(client)
    lockouts = AuditEvent.objects.filter(action="login_lockout")
    assert [(e.object_type, e.object_id, e.actor, e.after["failures"]) for e in lockouts] == [("account", "ada", "system", 5)]
    assert audit_verify() == []


def test_a_locked_login_reads_the_same_whether_the_account_exists_or_not(clock, checks):
    researcher("ada", password=PASSWORD)
    messages = {}
    for name in ("ada", "no-such-user"):
        client = Client()
        for n in range(6):
            page = post_login(client, name, f"guess-{n}")
        messages[name] = page.content.decode().split('<ul class="errors">')[1].split("</ul>")[0]
    assert LOCKED in messages["ada"] and messages["ada"] == messages["no-such-user"]
    assert len(checks) == 10  # five each: the made-up name costs the same work until it is locked too
    assert not AuditEvent.objects.filter(object_id="no-such-user").exists()


def test_time_lifts_the_lock_and_a_good_login_clears_the_count(clock, checks):
    researcher("ada", password=PASSWORD)
    client = Client()
    for n in range(5):
        post_login(client, "ada", f"guess-{n}")
    assert LOCKED in post_login(client, "ada", PASSWORD).content.decode()
    clock["t"] += 14 * 60
    assert LOCKED in post_login(client, "ada", PASSWORD).content.decode()
    clock["t"] += 2 * 60  # 16 minutes: the 15-minute lock is over
    assert post_login(client, "ada", PASSWORD).status_code == 302 and logged_in(client)
    client = Client()
    for n in range(4):
        post_login(client, "ada", f"again-{n}")
    assert post_login(client, "ada", PASSWORD).status_code == 302  # the good login resets the count ...
    client = Client()
    for n in range(4):
        post_login(client, "ada", f"later-{n}")
    assert post_login(client, "ada", PASSWORD).status_code == 302  # ... so four more failures lock nothing


def test_an_owner_lifts_a_members_lock_from_the_study_page_and_a_viewer_cannot(clock, checks):
    study = Study.objects.create(slug="loan-approval", title="Loans")
    olga = researcher("olga", study, Membership.Role.OWNER)
    vera = researcher("vera", study, Membership.Role.VIEWER)
    researcher("ada", study, Membership.Role.EDITOR, password=PASSWORD)
    researcher("stranger", password=PASSWORD)
    for name in ("ada", "stranger"):
        for n in range(5):
            post_login(Client(), name, f"guess-{n}")
    owner = client_for(olga)
    page = owner.get("/console/loan-approval/").content.decode()
    assert "login locked until" in page and 'action="/console/loan-approval/members/unlock/"' in page
    assert "login locked until" not in client_for(vera).get("/console/loan-approval/").content.decode()

    assert client_for(vera).post("/console/loan-approval/members/unlock/", {"username": "ada"}).status_code == 403
    outsider = owner.post("/console/loan-approval/members/unlock/", {"username": "stranger"}, follow=True)
    assert "is not a member" in outsider.content.decode()  # an owner lifts only their members' locks
    assert LOCKED in post_login(Client(), "ada", PASSWORD).content.decode()

    response = owner.post("/console/loan-approval/members/unlock/", {"username": "ada"})
    assert response.status_code == 303
    client = Client()
    assert post_login(client, "ada", PASSWORD).status_code == 302 and logged_in(client)
    assert LOCKED in post_login(Client(), "stranger", PASSWORD).content.decode()
    unlock = AuditEvent.objects.get(action="login_unlock")
    assert (unlock.actor, unlock.study_slug, unlock.object_id) == ("olga", "loan-approval", "ada")
    assert audit_verify() == []


def test_the_admin_login_is_throttled_by_the_same_rules(clock, checks):
    """20 wrong passwords on /admin/login/: 5 checked, then the lock (shared with the console's login)."""
    researcher("root", password=PASSWORD, is_staff=True, is_superuser=True)
    client = Client()
    pages = [post_login(client, "root", f"guess-{n}", url="/admin/login/") for n in range(20)]
    assert len(checks) == 5
    assert LOCKED in pages[-1].content.decode()
    right = post_login(client, "root", PASSWORD, url="/admin/login/")
    assert LOCKED in right.content.decode() and len(checks) == 5
    assert client.get("/admin/").status_code == 302  # still sent to the login page
    assert LOCKED in post_login(Client(), "root", PASSWORD).content.decode()  # one lock for both doors


def test_a_superuser_lifts_a_lock_from_the_admin(clock, checks):
    root = researcher("root", is_staff=True, is_superuser=True)
    ada = researcher("ada", password=PASSWORD)
    for n in range(5):
        post_login(Client(), "ada", f"guess-{n}")
    admin = client_for(root)
    until = datetime.fromtimestamp(T0 + 15 * 60, tz=timezone.utc)
    assert f"{until:%H:%M} UTC" in admin.get("/admin/auth/user/").content.decode()
    admin.post("/admin/auth/user/", {"action": "unlock_logins", "_selected_action": [ada.pk]})
    assert post_login(Client(), "ada", PASSWORD).status_code == 302
    assert AuditEvent.objects.get(action="login_unlock").actor == "root"


def test_one_ip_guessing_many_accounts_is_locked_out_for_every_account(clock, checks, settings):
    settings.LOGIN_FAILURES_PER_IP = 10
    researcher("ada", password=PASSWORD)
    attacker = {"REMOTE_ADDR": "203.0.113.9"}
    for n in range(30):
        post_login(Client(), f"user-{n}", "guess", **attacker)  # one try per name: no account lock
    assert len(checks) == 10
    assert LOCKED in post_login(Client(), "ada", PASSWORD, **attacker).content.decode()
    assert len(checks) == 10
    assert post_login(Client(), "ada", PASSWORD, REMOTE_ADDR="198.51.100.7").status_code == 302  # others log in
    row = AuditEvent.objects.get(action="login_lockout")
    assert (row.object_type, row.object_id) == ("ip", "203.0.113.9")

"""Login throttling for the console and the admin: per account, per client IP, with a lock-out.

Every password login (the console's /console/login/, the admin's /admin/login/, `Client.login` in tests)
goes through Django's `authenticate()`, and so through `ThrottledModelBackend`, the only backend:

- a username that failed `LOGIN_FAILURES_PER_ACCOUNT` times within `LOGIN_FAILURE_WINDOW_MINUTES` is
  locked for `LOGIN_LOCKOUT_MINUTES`; the count is kept per username, whether or not the account
  exists, so a locked login says the same thing for both;
- a client IP that failed `LOGIN_FAILURES_PER_IP` times within the window (over all usernames) is
  locked for the same time;
- while locked, the password is not checked at all (no hash is computed): the backend stops
  `authenticate()` before the database is asked anything;
- a successful login clears the account's count (not the IP's: one's own good login must not let an IP
  go on guessing others).

Counters and locks live in the default cache (Redis), shared by every web process. Locks carry their
end time, compared with `_now()` (tests move the clock), and expire from the cache a little later.
An owner of a study the account is a member of (from the study page), or a superuser (from the admin),
can lift an account's lock; the lock-out and the lifting are audited (studies.audit).
"""
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import transaction
from rest_framework.throttling import BaseThrottle

from studies.audit import audit_record
from studies.models import Membership
from studies.selectors import study_get_for_researcher

DEFAULTS = {  # settings of the same names override them (config/settings.py reads them from the environment)
    "LOGIN_FAILURES_PER_ACCOUNT": 5,
    "LOGIN_FAILURES_PER_IP": 50,
    "LOGIN_FAILURE_WINDOW_MINUTES": 15,
    "LOGIN_LOCKOUT_MINUTES": 15,
}
KEY = "login"


def _setting(name: str) -> int:
    return int(getattr(settings, name, DEFAULTS[name]))


def _now() -> float:
    """The clock of every window and lock (a function, so a test can move it)."""
    return time.time()


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _keys(kind: str, ident: str, now: float) -> tuple[str, str]:
    """(the failure counter of the current window, the lock) of one account or IP."""
    window_s = max(1, _setting("LOGIN_FAILURE_WINDOW_MINUTES")) * 60
    ident = _digest(ident)
    return f"{KEY}:fail:{kind}:{ident}:{int(now // window_s)}", f"{KEY}:lock:{kind}:{ident}"


def client_ip(request) -> str:
    """The client's address as the API's per-IP throttle sees it (REST_FRAMEWORK["NUM_PROXIES"])."""
    return BaseThrottle().get_ident(request) or ""


@dataclass(frozen=True)
class LoginRefusal:
    until: float

    @property
    def message(self) -> str:
        """The same words for an account that exists and one that does not, and for an IP lock."""
        until = datetime.fromtimestamp(self.until, tz=dt_timezone.utc)
        minutes = max(1, round((self.until - _now()) / 60))
        return (f"Too many failed logins: logging in is paused for this account or from your network until "
                f"{until:%H:%M} UTC (about {minutes} min). An owner of one of your studies can lift it sooner.")


def login_refusal(*, username: str, ip: str) -> LoginRefusal | None:
    """Return why this login may not even be tried now (the later of two locks), or None. One cache read."""
    now = _now()
    keys = [_keys("account", username, now)[1]] + ([_keys("ip", ip, now)[1]] if ip else [])
    ends = [until for until in cache.get_many(keys).values() if until and until > now]
    return LoginRefusal(until=max(ends)) if ends else None


def _count(key: str) -> int:
    cache.add(key, 0, timeout=_setting("LOGIN_FAILURE_WINDOW_MINUTES") * 60 + 60)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=_setting("LOGIN_FAILURE_WINDOW_MINUTES") * 60 + 60)
        return 1


def login_failure_record(*, username: str, ip: str) -> None:
    """Count a failed login; lock the account or the IP when it reaches its limit (audited)."""
    now = _now()
    for kind, ident, limit in (("account", username, _setting("LOGIN_FAILURES_PER_ACCOUNT")),
                               ("ip", ip, _setting("LOGIN_FAILURES_PER_IP"))):
        if not ident or limit <= 0:  # a limit of 0 is off
            continue
        fail_key, lock_key = _keys(kind, ident, now)
        if _count(fail_key) < limit:
            continue
        minutes = _setting("LOGIN_LOCKOUT_MINUTES")
        until = now + minutes * 60
        cache.delete(fail_key)  # counted again from zero once the lock ends
        cache.set(lock_key, until, timeout=minutes * 60 + 60)
        _audit_lockout(kind=kind, ident=ident, limit=limit, minutes=minutes, until=until)


def _audit_lockout(*, kind: str, ident: str, limit: int, minutes: int, until: float) -> None:
    if kind == "account" and not get_user_model().objects.filter(username=ident).exists():
        return  # a made-up name: locked all the same (nothing tells it apart), but nothing to audit
    audit_record(actor=None, action="login_lockout", object_type=kind, object_id=ident[:128],
                 after={"failures": limit, "window_minutes": _setting("LOGIN_FAILURE_WINDOW_MINUTES"),
                        "minutes": minutes,
                        "until": datetime.fromtimestamp(until, tz=dt_timezone.utc).isoformat(timespec="seconds")})


def login_success_record(*, username: str) -> None:
    """A good password clears the account's failure count (the IP's stays)."""
    cache.delete(_keys("account", username, _now())[0])


def login_locked_until(*, usernames: list[str]) -> dict[str, datetime]:
    """The accounts among `usernames` that are locked now, with the end of their lock (for the members list)."""
    now = _now()
    keys = {_keys("account", name, now)[1]: name for name in usernames}
    found = cache.get_many(list(keys))
    return {keys[key]: datetime.fromtimestamp(until, tz=dt_timezone.utc)
            for key, until in found.items() if until and until > now}


class UnlockRefused(Exception):
    """The actor may not lift this account's lock (the message says why)."""


@transaction.atomic
def login_unlock(*, actor, username: str, study=None) -> bool:
    """Lift the lock of `username`'s account now. Return False if it was not locked (nothing audited).

    Allowed to a superuser (study=None: from the admin), or to an owner of `study` when `username` is a
    member of it (the console's study page). The IP locks are not lifted: only time does that.
    """
    if study is None:
        if not getattr(actor, "is_superuser", False):
            raise UnlockRefused("only a superuser can lift a lock outside a study")
    else:
        study = study_get_for_researcher(user=actor, slug=study.slug, needs="members")
        if not Membership.objects.filter(study=study, user__username=username).exists():
            raise UnlockRefused(f"{username!r} is not a member of {study.slug}")
    now = _now()
    fail_key, lock_key = _keys("account", username, now)
    until = cache.get(lock_key)
    cache.delete_many([fail_key, lock_key])
    if not until or until <= now:
        return False
    audit_record(actor=actor, action="login_unlock", study_slug=getattr(study, "slug", ""), object_type="account",
                 object_id=username, before={"locked_until": datetime.fromtimestamp(
                     until, tz=dt_timezone.utc).isoformat(timespec="seconds")}, after={"locked": False})
    return True


class ThrottledModelBackend(ModelBackend):
    """Django's username/password check behind the limits above. The only entry in AUTHENTICATION_BACKENDS.

    A locked login raises PermissionDenied, which makes `authenticate()` stop at once (no other backend,
    no password hash) and return None; the refusal is left on the request (`request.login_refusal`) so
    the login forms can say why.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.pop(get_user_model().USERNAME_FIELD, None)
        if username is None or password is None:
            return None
        username = str(username)
        ip = client_ip(request) if request is not None else ""
        refusal = login_refusal(username=username, ip=ip)
        if refusal is not None:
            if request is not None:
                request.login_refusal = refusal
            raise PermissionDenied("login locked")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            login_failure_record(username=username, ip=ip)
            if request is not None:  # the failure that locks says so at once
                request.login_refusal = login_refusal(username=username, ip=ip)
        else:
            login_success_record(username=username)
        return user

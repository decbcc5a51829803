"""API rate limits: per token, per logged-in session user, and per IP for anyone not (yet) identified.

Counters live in the default cache (Redis), so every web process shares them. Rates come from
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] and are read per request, so a test can lower them.
"""
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from .models import ApiToken


class _Throttle(SimpleRateThrottle):
    def get_rate(self):
        # DRF reads the rates once, at import; read them now so override_settings and deploys apply.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class TokenThrottle(_Throttle):
    """Requests made with one personal token."""

    scope = "token"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiToken):
            return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
        return None


class SessionUserThrottle(_Throttle):
    """Requests of a user logged in through the pages (the console's own htmx and the docs page)."""

    scope = "user"

    def get_cache_key(self, request, view):
        if request.auth is None and request.user and request.user.is_authenticated:
            return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
        return None


class AnonIPThrottle(_Throttle):
    """Requests with no valid credentials, per client IP: slows down anyone guessing keys."""

    scope = "anon"

    def get_cache_key(self, request, view):
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

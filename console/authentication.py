"""How API requests say who they are: a personal token (`Authorization: Bearer <key>`) or the page session.

Token requests need no CSRF token: a browser never adds an Authorization header on its own, so a
forged cross-site request cannot carry one. Session requests go through DRF's SessionAuthentication,
which enforces CSRF for a logged-in user. `ForeignOriginRefused` refuses unsafe requests from another
site's page, whichever way they authenticate.
"""
from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission

from . import services

KEYWORD = "Bearer"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer tb_...` → (the token's user, the ApiToken row)."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD.lower().encode():
            return None  # not ours: the session may still authenticate the request
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("the Authorization header must be 'Bearer <key>'")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("invalid token") from None
        token = services.api_token_authenticate(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed("invalid or revoked token")
        return token.user, token

    def authenticate_header(self, request) -> str:
        # Named first among the authentication classes, this makes an anonymous request answer 401.
        return f'{KEYWORD} realm="api"'


def _origin_allowed(request, origin: str) -> bool:
    """This site itself (scheme and host as the request arrived) or a trusted origin; `null` is neither."""
    scheme = "https" if request.is_secure() else "http"
    return origin == f"{scheme}://{request.get_host()}" or origin in settings.CSRF_TRUSTED_ORIGINS


class ForeignOriginRefused(BasePermission):
    """Refuse an unsafe request whose `Origin` is neither this site nor one of CSRF_TRUSTED_ORIGINS.

    Scripts (curl, requests) send no Origin and pass; a page of another site cannot hide it. Django's
    CSRF check already does this for session requests; this holds it for token requests too, so a
    token pasted into some other web app cannot be used from there to change anything.
    """

    message = "requests from another site's pages may not change anything"

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return _origin_allowed(request, origin)

"""What every request passes before the apps see it: the body limit (ASGI, around Django), NUL bytes refused,
and a database outage answered with a page that says the study is only temporarily unavailable.

docs/deploy.md ("Limits", "Database connections") gives the numbers and the reverse proxy's side of them.
"""
import logging
import re

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.deprecation import MiddlewareMixin
from django.utils.translation import gettext as _

logger = logging.getLogger(__name__)


# --- the body limit: an ASGI middleware, so nothing past the limit is read, buffered or spooled ---------------

class BodyLimit:
    """Refuse a request body over its limit with 413 before the app reads any of it.

    A declared Content-Length over the limit is refused at once, without reading a byte. A chunked body (no
    Content-Length) is read here, into memory, up to the limit, and refused as soon as the running total
    passes it; only a body within the limit reaches Django, which reads (and above FILE_UPLOAD_MAX_MEMORY_SIZE
    spools to a temporary file) whatever it is given. The limit is BODY_MAX_BYTES, or on BODY_UPLOAD_PATHS
    the study-file limit (studies.spec.MAX_STUDY_BYTES) plus BODY_UPLOAD_OVERHEAD_BYTES.
    """

    def __init__(self, app):
        from studies.spec import MAX_STUDY_BYTES  # the study-file limit has one home (docs/study-file.md)

        self.app = app
        self.limit = settings.BODY_MAX_BYTES
        self.upload_limit = max(self.limit, MAX_STUDY_BYTES + settings.BODY_UPLOAD_OVERHEAD_BYTES)
        self.upload_paths = [re.compile(pattern) for pattern in settings.BODY_UPLOAD_PATHS]

    def limit_for(self, path: str) -> int:
        return self.upload_limit if any(p.match(path) for p in self.upload_paths) else self.limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        declared, chunked = None, False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _plain(send, 400, b"Bad Content-Length.\n")
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared > limit:
            return await _too_large(send, limit)
        if declared is None and chunked:
            parts, total = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                parts.append(message.get("body", b""))
                total += len(parts[-1])
                if total > limit:
                    return await _too_large(send, limit)
                if not message.get("more_body", False):
                    break
            receive = _replay({"type": "http.request", "body": b"".join(parts), "more_body": False}, receive)
        return await self.app(scope, receive, send)


def _replay(first: dict, receive):
    """An ASGI receive that gives `first`, then whatever `receive` gives (the client's disconnect)."""
    pending = [first]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def _too_large(send, limit: int) -> None:
    await _plain(send, 413, f"Request body too large: the limit here is {limit} bytes.\n".encode())


async def _plain(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


# --- Django middleware -----------------------------------------------------------------------------------------

def _page(request: HttpRequest, template: str, title: str, message: str, status: int, *, error: str,
          json_message: str = "") -> HttpResponse:
    """A participant-style page rendered without the request (no session, no user, no database); for the REST
    API its error shape `{"detail": ..., "code": error}` (docs/api.md), for the chat page's script JSON
    `{"error": error, "message": ...}`."""
    text = json_message or f"{title}. {message}"
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": text, "code": error}, status=status)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"error": error, "message": text}, status=status)
    html = render_to_string(f"participants/{template}", {
        "title": title, "message": message, "lang": translation.get_language(),
    })
    return HttpResponse(html, status=status)


class NulBytesRefused(MiddlewareMixin):
    """Refuse a NUL byte anywhere in the query string or a form field (not an uploaded file) with 400.

    PostgreSQL cannot store one in text, so it used to surface as a 500. A chat message comes back as JSON
    with the message (the text stays in the box); a page's form gets a page that says what to do.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not _has_nul(request):
            return None
        return _page(request, "refused.html", _("Your text contains a character that cannot be saved"),
                     _("It held an invisible NUL character (often pasted along with text). Go back with your "
                       "browser's Back button, where what you typed is still there, delete that part or type "
                       "it again, and send it once more."), 400, error="nul",
                     json_message=_("Your text contains a character that cannot be saved (an invisible NUL "
                                    "character, often pasted along with text). Please delete that part or type "
                                    "it again, then send it once more."))


def _has_nul(request: HttpRequest) -> bool:
    if _any_nul(request.GET):
        return True
    content_type = request.content_type or ""
    if request.method == "POST" and content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return _any_nul(request.POST)  # files are bytes and may hold NULs (a zip); only fields are text
    if content_type == "application/json" and request.method in ("POST", "PUT", "PATCH"):
        return b"\\u0000" in request.body.lower()  # JSON text escapes a NUL; the database refuses it in jsonb too
    return False


def _any_nul(data) -> bool:
    return any("\x00" in key or any("\x00" in value for value in data.getlist(key)) for key in data)


class DatabaseUnavailable(MiddlewareMixin):
    """Answer a lost database (unreachable, restarting, no free pooled connection in time) with 503 and a page
    that says the study is temporarily unavailable and the answers are saved, in the page's language.

    Only errors of the connection (OperationalError, InterfaceError): a constraint or a bad query is a bug
    and stays a 500.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("database unavailable: %s: %s (answered 503)", type(exception).__name__,
                     str(exception).strip().splitlines()[0] if str(exception).strip() else "")
        response = _page(request, "unavailable.html", _("The study is temporarily unavailable"),
                         _("Your answers so far are saved. Please wait a minute, then reload this page: you "
                           "will continue where you left off."), 503, error="unavailable")
        response["Retry-After"] = "60"
        return response

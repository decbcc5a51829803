"""How researcher pages and API views reach a study: through the one gatekeeper, and saying what they need.

Every researcher page is a function view wrapped in `researcher_view(needs=...)`; every API view is a
class with `needs = "..."` and `StudyAccess` among its permission classes. The access-matrix test
(tests/console/test_access_matrix.py) reads `needs` off every resolved view, so a new endpoint is
covered without editing the test, and fails for any researcher URL that does not declare it.

needs is a key of studies.selectors.NEEDS ("monitor", "data", "edit", "members"), or "account" for
views about the user's own account, tokens or study list, which take no slug and only need a login,
or "public" for the few pages anyone may open (login, the API docs): wrap those in `public_view` so
the test knows they are public on purpose.
"""
import functools

from django.contrib.auth.views import redirect_to_login
from rest_framework.permissions import SAFE_METHODS, BasePermission

from studies.selectors import NEEDS, study_get_for_researcher

ACCOUNT = "account"
PUBLIC = "public"
ALL_NEEDS = (ACCOUNT, *NEEDS)


def public_view(view):
    """Mark a view (function, or `SomeView.as_view()`) as open to anyone: sets `view.needs = "public"`."""
    view.needs = PUBLIC
    return view


def researcher_view(*, needs: str):
    """Decorate a function page view: log in, then resolve `study` through the gatekeeper.

    An anonymous user is sent to the login page (whatever the method: an anonymous POST has nothing to
    act on and the login page is the useful answer). A study the user has no role on raises Http404,
    a role too weak raises PermissionDenied; the view is called with `study=` added to its kwargs
    (except for needs="account", which takes no slug).
    """
    assert needs in ALL_NEEDS, needs

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if needs != ACCOUNT:
                kwargs["study"] = study_get_for_researcher(user=request.user, slug=kwargs["slug"], needs=needs)
            return view(request, *args, **kwargs)

        wrapper.needs = needs
        return wrapper

    return decorator


class StudyAccess(BasePermission):
    """DRF permission: a logged-in user (session or token) whose role on the URL's study allows `view.needs`.

    The study is resolved once, here, and kept on `view.study` and `request.study` so the view does not
    call the gatekeeper again. Http404/PermissionDenied from the gatekeeper pass through to DRF, which
    answers 404/403. A read-scoped token may only use safe methods.
    """

    message = "a read-only token cannot change anything"

    def has_permission(self, request, view) -> bool:
        needs = getattr(view, "needs", None)
        if needs not in ALL_NEEDS:
            raise AssertionError(f"{type(view).__name__} must declare needs (one of {ALL_NEEDS})")
        if not (request.user and request.user.is_authenticated):
            return False  # DRF turns this into 401 (with an authenticator's header) or 403
        if needs != ACCOUNT:
            # Before the scope check, so a study the user has no role on stays a 404 for every token.
            study = study_get_for_researcher(user=request.user, slug=view.kwargs["slug"], needs=needs)
            view.study = study
            request.study = study
        scope = getattr(request.auth, "scope", None)  # None for a session: sessions may write
        if scope is not None and scope != "write" and request.method not in SAFE_METHODS:
            return False
        return True

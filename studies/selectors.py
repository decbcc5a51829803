"""Reads on studies."""
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import Http404

from .models import Membership, Study, StudyAsset, StudyVersion
from .protocol import Protocol

_ENTRY_SALT = "teachback.entry-link"
ENTRY_KINDS = ("pilot", "simulated")

_R = Membership.Role
# What each kind of access needs. docs/roles.md is the table a researcher reads.
NEEDS = {
    "monitor": {_R.OWNER, _R.EDITOR, _R.ANALYST, _R.VIEWER},  # see the study, its state and the monitor
    "data": {_R.OWNER, _R.ANALYST},                             # participants, transcripts, export, report
    "edit": {_R.OWNER, _R.EDITOR},                              # load versions, launch, pause, close, bots
    "members": {_R.OWNER},                                      # add, change and remove members
}


def study_get_for_researcher(*, user, slug: str, needs: str) -> Study:
    """Return the study if `user` holds a role on it that allows `needs` (a key of NEEDS).

    The one gatekeeper of the researcher side: a study the user has no role on raises Http404 (its
    existence is not revealed); a role too weak raises PermissionDenied (403).
    """
    allowed = NEEDS[needs]
    if not getattr(user, "is_authenticated", False):
        raise Http404("no such study")
    membership = Membership.objects.select_related("study").filter(user=user, study__slug=slug).first()
    if membership is None:
        raise Http404("no such study")
    if membership.role not in allowed:
        raise PermissionDenied(f"your role on {slug} ({membership.role}) does not allow this")
    study = membership.study
    study.role = membership.role  # for templates and serializers: what this user may do here
    return study


def studies_for_researcher(*, user):
    """Return the studies the user holds a role on, each annotated with `role`, newest first."""
    from django.db.models import F

    return (
        Study.objects.filter(memberships__user=user)
        .annotate(role=F("memberships__role"))
        .order_by("-created_at")
    )


def role_allows(*, role: str, needs: str) -> bool:
    return role in NEEDS[needs]


def study_version_open(*, slug: str) -> StudyVersion | None:
    """Return the live or paused version of a study, or None."""
    return (
        StudyVersion.objects.select_related("study")
        .filter(study__slug=slug, state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED])
        .first()
    )


def study_version_protocol(version: StudyVersion) -> Protocol:
    return Protocol(version.spec)


def study_asset_get(*, version_id: int, path: str) -> StudyAsset | None:
    return StudyAsset.objects.filter(version_id=version_id, path=path).first()


def entry_link_token(*, slug: str, kind: str) -> str:
    """Return the signed token of a pilot or simulated-participant link for a study."""
    assert kind in ENTRY_KINDS
    return signing.dumps({"s": slug, "k": kind}, salt=_ENTRY_SALT, compress=True)


def entry_link_kind(*, slug: str, token: str) -> str | None:
    """Return the kind of a signed entry token for this study, or None if it is not valid."""
    try:
        data = signing.loads(token, salt=_ENTRY_SALT)
    except signing.BadSignature:
        return None
    return data.get("k") if data.get("s") == slug and data.get("k") in ENTRY_KINDS else None

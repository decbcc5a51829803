"""Reads on studies."""
import difflib
import io
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

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


def study_versions(*, study: Study):
    """Return the study's versions, newest first (without their spec and frozen keys: fetch one for those)."""
    return StudyVersion.objects.filter(study=study).defer("spec", "target_keys", "target_info").order_by("-number")


def study_version_diff(*, study: Study, a: int, b: int) -> str:
    """Return a unified diff from version `a` to version `b`: the normalised spec as YAML, then the
    sha256 of every asset (a changed figure shows as a changed hash). Raises Http404 for a missing version."""
    versions = {v.number: v for v in StudyVersion.objects.filter(study=study, number__in=[a, b])}
    for number in (a, b):
        if number not in versions:
            raise Http404(f"{study.slug} has no version {number}")
    hashes = {number: {} for number in (a, b)}
    for version_id, path, sha in StudyAsset.objects.filter(version__in=versions.values()).values_list(
        "version__number", "path", "sha256"
    ).order_by("path"):
        hashes[version_id][path] = sha
    return "".join(difflib.unified_diff(
        _version_text(versions[a].spec, hashes[a]).splitlines(keepends=True),
        _version_text(versions[b].spec, hashes[b]).splitlines(keepends=True),
        fromfile=f"{study.slug} v{a}", tofile=f"{study.slug} v{b}",
    ))


def _version_text(spec: dict, assets: dict[str, str]) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")  # keeps the spec's own key order (safe dumping would sort it)
    yaml.default_flow_style = False
    yaml.allow_unicode = True
    yaml.width = 100
    out = io.StringIO()
    yaml.dump({"spec": _blocks(spec), "assets (sha256)": dict(sorted(assets.items()))}, out)
    return out.getvalue()


def _blocks(value):
    """Multi-line texts as YAML block scalars, so that a diff shows the changed line, not the whole text."""
    from ruamel.yaml.scalarstring import LiteralScalarString

    if isinstance(value, dict):
        return {k: _blocks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blocks(v) for v in value]
    if isinstance(value, str) and "\n" in value.strip("\n"):
        return LiteralScalarString(value)
    return value


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


@dataclass(frozen=True)
class EntryLink:
    """A signed pilot or simulated-participant link's token, the version it admits to and when it expires."""

    token: str
    kind: str
    number: int
    expires_at: datetime


def entry_link_issue(*, slug: str, kind: str, number: int | None = None, days: int | None = None) -> EntryLink:
    """Sign a pilot or simulated-participant link for one version of a study (default: the open version,
    else the latest) that expires after `days` (default PILOT_LINK_DAYS)."""
    assert kind in ENTRY_KINDS
    if number is None:
        open_version = study_version_open(slug=slug)
        number = open_version.number if open_version else (
            StudyVersion.objects.filter(study__slug=slug).order_by("-number").values_list("number", flat=True).first() or 0)
    days = settings.PILOT_LINK_DAYS if days is None else days
    expires_at = (timezone.now() + timedelta(days=days)).replace(microsecond=0)
    token = signing.dumps({"s": slug, "k": kind, "v": number, "x": int(expires_at.timestamp())},
                          salt=_ENTRY_SALT, compress=True)
    return EntryLink(token=token, kind=kind, number=number, expires_at=expires_at)


def entry_link_token(*, slug: str, kind: str, number: int | None = None) -> str:
    """Return the signed token of a pilot or simulated-participant link (see `entry_link_issue`)."""
    return entry_link_issue(slug=slug, kind=kind, number=number).token


def entry_link_check(*, slug: str, token: str, number: int) -> tuple[str | None, str]:
    """Return (kind, "") for a valid entry token of version `number` of this study, else (None, problem):
    problem is "invalid" (not ours, altered, another study), "old_version" or "expired"."""
    try:
        data = signing.loads(token, salt=_ENTRY_SALT)
    except signing.BadSignature:
        return None, "invalid"
    if not isinstance(data, dict) or data.get("s") != slug or data.get("k") not in ENTRY_KINDS:
        return None, "invalid"
    if data.get("v") != number:  # also every token signed before links carried a version
        return None, "old_version"
    if not isinstance(data.get("x"), int) or data["x"] <= timezone.now().timestamp():
        return None, "expired"
    return data["k"], ""


def entry_link_verify(*, slug: str, token: str) -> tuple[str | None, str]:
    """`entry_link_check` against the study's open version; with none open, (None, "") (the entry says
    the study is not open)."""
    version = study_version_open(slug=slug)
    return entry_link_check(slug=slug, token=token, number=version.number) if version else (None, "")


def entry_link_kind(*, slug: str, token: str) -> str | None:
    """Return the kind of a signed entry token valid now for the study's open version, or None."""
    return entry_link_verify(slug=slug, token=token)[0]

"""Reads on studies."""
from django.core import signing

from .models import StudyAsset, StudyVersion
from .protocol import Protocol

_ENTRY_SALT = "teachback.entry-link"
ENTRY_KINDS = ("pilot", "simulated")


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

"""Writes on studies: load a study file as a new draft version, launch (freeze) it."""
import hashlib

from django.db import transaction
from django.utils import timezone

from .models import Study, StudyAsset, StudyVersion
from .spec import StudyFile, localize
from .targets import target_keys


class StudyStateError(Exception):
    """The study is not in a state that allows this action; the message says why."""


@transaction.atomic
def study_version_create(*, study_file: StudyFile) -> tuple[StudyVersion, bool]:
    """Store a study file as draft version n+1, or return the latest version if it has the same hash."""
    spec = study_file.spec
    study, _ = Study.objects.get_or_create(
        slug=spec["slug"], defaults={"title": localize(spec["title"], spec["languages"][0])}
    )
    study = Study.objects.select_for_update().get(pk=study.pk)
    latest = study.versions.order_by("-number").first()
    if latest is not None and latest.sha256 == study_file.sha256:
        return latest, False
    version = StudyVersion.objects.create(
        study=study,
        number=(latest.number + 1) if latest else 1,
        spec=spec,
        sha256=study_file.sha256,
        source=str(study_file.source),
    )
    StudyAsset.objects.bulk_create(
        StudyAsset(version=version, path=path, content=content, sha256=hashlib.sha256(content).hexdigest())
        for path, content in sorted(study_file.assets.items())
    )
    study.title = localize(spec["title"], spec["languages"][0])
    study.save(update_fields=["title"])
    return version, True


def study_launch(*, slug: str, number: int | None = None) -> StudyVersion:
    """Freeze a draft version and make it the live one; the previous open version closes.

    Trains the target (outside any transaction) and freezes the answer keys of `from_target` items.
    Launching the version that is already live changes nothing.
    """
    version = _version_get(slug=slug, number=number)
    if version.state == StudyVersion.State.LIVE:
        return version
    if version.state != StudyVersion.State.DRAFT:
        raise StudyStateError(f"{slug} v{version.number} is {version.state}; only a draft can be launched")
    assets = {a.path: bytes(a.content) for a in version.assets.all()}
    target_sha256, keys, info = target_keys(version.spec, assets)  # raises StudyFileInvalid on a bad target
    with transaction.atomic():
        Study.objects.select_for_update().get(pk=version.study_id)
        version = StudyVersion.objects.select_for_update().get(pk=version.pk)
        if version.state != StudyVersion.State.DRAFT:
            raise StudyStateError(f"{slug} v{version.number} is {version.state}; only a draft can be launched")
        StudyVersion.objects.filter(
            study_id=version.study_id, state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED]
        ).update(state=StudyVersion.State.CLOSED)
        version.state = StudyVersion.State.LIVE
        version.launched_at = timezone.now()
        version.target_sha256 = target_sha256 or ""
        version.target_keys = keys
        version.target_info = info
        version.save(update_fields=["state", "launched_at", "target_sha256", "target_keys", "target_info"])
    return version


@transaction.atomic
def study_state_set(*, slug: str, state: str) -> StudyVersion:
    """Pause, resume or close the open version. New entries need a live version; people inside finish."""
    allowed = {
        StudyVersion.State.PAUSED: [StudyVersion.State.LIVE],
        StudyVersion.State.LIVE: [StudyVersion.State.PAUSED],
        StudyVersion.State.CLOSED: [StudyVersion.State.LIVE, StudyVersion.State.PAUSED],
    }
    version = (
        StudyVersion.objects.select_for_update()
        .filter(study__slug=slug, state__in=allowed[state])
        .first()
    )
    if version is None:
        raise StudyStateError(f"{slug} has no version that can become {state}")
    version.state = state
    version.save(update_fields=["state"])
    return version


def _version_get(*, slug: str, number: int | None) -> StudyVersion:
    versions = StudyVersion.objects.filter(study__slug=slug)
    version = versions.filter(number=number).first() if number else versions.order_by("-number").first()
    if version is None:
        raise StudyStateError(f"no study version {slug}" + (f" v{number}" if number else ""))
    return version

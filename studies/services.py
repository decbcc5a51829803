"""Writes on studies: load a study file as a new draft version, launch (freeze) it, pause, resume, close,
and manage who may do what. Every change writes one audit row in its own transaction (`studies.audit`);
`actor` is the researcher (a user), or None for the system and the shell (audited as "system")."""
import hashlib

from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .audit import audit_record
from .models import Membership, Study, StudyAsset, StudyVersion
from .selectors import study_get_for_researcher
from .spec import STUDY_FILE, SpecError, StudyFile, StudyFileInvalid, localize, texts_held_out_errors
from .targets import target_keys
from .upload import study_files_read, upload_files


class StudyStateError(Exception):
    """The study is not in a state that allows this action; the message says why."""


class MembershipError(Exception):
    """A membership change that cannot be made (unknown user or role, the last owner); the message says why."""


_STATE_ACTIONS = {
    StudyVersion.State.PAUSED: "study_pause",
    StudyVersion.State.LIVE: "study_resume",
    StudyVersion.State.CLOSED: "study_close",
}
BUDGET = "budget"
ARM_UNAVAILABLE = "arm_unavailable"  # the pause when allocation met an arm that cannot run


def study_version_create(*, study_file: StudyFile, actor=None) -> tuple[StudyVersion, bool]:
    """Store a study file as draft version n+1, or return the latest version if it has the same hash."""
    return _version_create(study_file=study_file, actor=actor)


@transaction.atomic
def _version_create(*, study_file: StudyFile, actor, uploader=None) -> tuple[StudyVersion, bool]:
    """Store the version. With `uploader`: a new study gets them as its owner, an existing one needs "edit"."""
    spec = study_file.spec
    study, study_created = Study.objects.get_or_create(
        slug=spec["slug"], defaults={"title": localize(spec["title"], spec["languages"][0])}
    )
    study = Study.objects.select_for_update().get(pk=study.pk)
    if uploader is not None:
        if study_created:
            Membership.objects.create(study=study, user=uploader, role=Membership.Role.OWNER)
        else:
            _require_edit(user=uploader, slug=study.slug, text=b"")
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
    after = {"number": version.number, "state": version.state, "sha256": version.sha256,
             "assets": len(study_file.assets)}
    if study_created:
        after["study_created"] = True
        if uploader is not None:
            after["owner"] = uploader.username
    audit_record(
        actor=actor, action="study_load", study_slug=study.slug, object_type="study_version",
        object_id=version.number,
        before=None if latest is None else {"number": latest.number, "sha256": latest.sha256, "state": latest.state},
        after=after,
    )
    return version, True


def study_file_upload(*, user, filename: str, content: bytes) -> tuple[StudyVersion, bool]:
    """Validate an uploaded study (a .zip of its folder, or its study.yaml) and store it as a new draft.

    Raises StudyFileInvalid with the same line-numbered errors as `manage.py study_load` (and one per
    problem of the archive). A new slug makes `user` the study's owner; an existing slug needs "edit"
    on it (PermissionDenied for a weaker role; a study the user has no role on is reported as a taken
    slug, with its line). A study.yaml uploaded alone for an existing study keeps the files of its
    latest version.
    """
    files, yaml_alone = upload_files(filename=filename, content=content)
    slug = _slug_peek(files.get(STUDY_FILE, b""))
    study = Study.objects.filter(slug=slug).first() if slug else None
    if study is not None:
        _require_edit(user=user, slug=slug, text=files[STUDY_FILE])  # before reading: the files may come from it
        if yaml_alone:
            latest = study.versions.order_by("-number").first()
            if latest is not None:
                files = {**{a.path: bytes(a.content) for a in latest.assets.all()}, **files}
    study_file = study_files_read(files, source=f"upload:{filename}"[:500])
    try:
        return _version_create(study_file=study_file, actor=user, uploader=user)
    except StudyFileInvalid as invalid:  # the slug's study appeared meanwhile, or the peek missed it
        raise StudyFileInvalid([_with_line(e, files[STUDY_FILE]) for e in invalid.errors]) from None


def _require_edit(*, user, slug: str, text: bytes) -> None:
    """The gatekeeper, with "no role" turned into an error on the file's slug (the slug is taken)."""
    try:
        study_get_for_researcher(user=user, slug=slug, needs="edit")
    except Http404:
        raise StudyFileInvalid([SpecError(
            "slug", f"'{slug}' belongs to a study you have no role on; choose another slug", line=_slug_line(text),
        )]) from None


def _with_line(error: SpecError, text: bytes) -> SpecError:
    if error.path == "slug" and error.line is None:
        return SpecError(error.path, error.message, error.file, _slug_line(text))
    return error


def _slug_peek(text: bytes) -> str | None:
    """The slug the file declares, read without validating (validation reports every mistake later)."""
    try:
        data = YAML(typ="safe", pure=True).load(text.decode("utf-8"))
    except (YAMLError, UnicodeDecodeError, ValueError):
        return None
    slug = data.get("slug") if isinstance(data, dict) else None
    return slug if isinstance(slug, str) else None


def _slug_line(text: bytes) -> int | None:
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        if line.startswith("slug:"):
            return number
    return None


def study_launch(*, slug: str, number: int | None = None, actor=None, waivers: dict | None = None) -> StudyVersion:
    """Freeze a draft version and make it the live one; the previous open version closes.

    Trains the target (outside any transaction) and freezes the answer keys of `from_target` items.
    Launching the version that is already live changes nothing (and writes no audit row).
    `waivers` ({arm: [reasons]}) are the arms launched although they cannot run here: whether an arm can
    run is the caller's check (explainers.launch), since studies imports no other app; they are stored
    on the version and in the audit row.
    """
    version = _version_get(slug=slug, number=number)
    if version.state == StudyVersion.State.LIVE:
        return version
    if version.state != StudyVersion.State.DRAFT:
        raise StudyStateError(f"{slug} v{version.number} is {version.state}; only a draft can be launched")
    assets = {a.path: bytes(a.content) for a in version.assets.all()}
    shown = texts_held_out_errors(version.spec, assets)
    if shown:
        raise StudyFileInvalid(shown)
    target_sha256, keys, info = target_keys(version.spec, assets)  # raises StudyFileInvalid on a bad target
    with transaction.atomic():
        Study.objects.select_for_update().get(pk=version.study_id)
        version = StudyVersion.objects.select_for_update().get(pk=version.pk)
        if version.state != StudyVersion.State.DRAFT:
            raise StudyStateError(f"{slug} v{version.number} is {version.state}; only a draft can be launched")
        open_versions = StudyVersion.objects.filter(
            study_id=version.study_id, state__in=[StudyVersion.State.LIVE, StudyVersion.State.PAUSED]
        )
        closed = [{"number": n, "state": s} for n, s in open_versions.values_list("number", "state")]
        open_versions.update(state=StudyVersion.State.CLOSED)
        version.state = StudyVersion.State.LIVE
        version.launched_at = timezone.now()
        version.target_sha256 = target_sha256 or ""
        version.target_keys = keys
        version.target_info = info
        version.launch_waivers = dict(waivers or {})
        version.save(update_fields=["state", "launched_at", "target_sha256", "target_keys", "target_info",
                                    "launch_waivers"])
        audit_record(
            actor=actor, action="study_launch", study_slug=slug, object_type="study_version",
            object_id=version.number,
            before={"number": version.number, "state": StudyVersion.State.DRAFT, "open_versions": closed},
            after={"number": version.number, "state": version.state, "sha256": version.sha256,
                   "target_sha256": version.target_sha256, "keys_frozen": len(keys),
                   "closed_versions": [c["number"] for c in closed],
                   **({"waivers": version.launch_waivers} if version.launch_waivers else {})},
        )
    return version


def study_version_get(*, slug: str, number: int | None = None) -> StudyVersion:
    """Return the version (the latest when `number` is None); raise StudyStateError when there is none."""
    return _version_get(slug=slug, number=number)


def study_version_llm_report_set(*, version_id: int, report: dict) -> None:
    """Store the latest `llm_check` report on a version (any state: it describes the endpoints, not the study).

    Not audited: a measurement of the endpoints, not a change to the study.
    """
    StudyVersion.objects.filter(pk=version_id).update(llm_report=report)


@transaction.atomic
def study_state_set(*, slug: str, state: str, actor=None, reason: str = "", figures: dict | None = None,
                    number: int | None = None) -> StudyVersion:
    """Pause, resume or close the open version. New entries need a live version; people inside finish.

    `reason="budget"` is the automatic pause when the study's cost cap is reached (actor None, audit
    action "budget_pause" with `figures`); `number` restricts the change to that version.
    """
    allowed = {
        StudyVersion.State.PAUSED: [StudyVersion.State.LIVE],
        StudyVersion.State.LIVE: [StudyVersion.State.PAUSED],
        StudyVersion.State.CLOSED: [StudyVersion.State.LIVE, StudyVersion.State.PAUSED],
    }
    if state not in allowed:
        raise StudyStateError(f"unknown state {state!r}; use one of: {', '.join(allowed)}")
    versions = StudyVersion.objects.select_for_update().filter(study__slug=slug, state__in=allowed[state])
    if number is not None:
        versions = versions.filter(number=number)
    version = versions.first()
    if version is None:
        raise StudyStateError(f"{slug} has no version that can become {state}")
    before = {"number": version.number, "state": version.state, "reason": version.state_reason}
    version.state = state
    version.state_reason = reason if state == StudyVersion.State.PAUSED else ""
    version.save(update_fields=["state", "state_reason"])
    after = {"number": version.number, "state": version.state, "reason": version.state_reason}
    if figures:
        after.update(figures)
    audit_record(
        actor=actor, action="budget_pause" if reason == BUDGET else _STATE_ACTIONS[state], study_slug=slug,
        object_type="study_version", object_id=version.number, before=before, after=after,
    )
    return version


def _version_get(*, slug: str, number: int | None) -> StudyVersion:
    versions = StudyVersion.objects.filter(study__slug=slug)
    version = versions.filter(number=number).first() if number else versions.order_by("-number").first()
    if version is None:
        raise StudyStateError(f"no study version {slug}" + (f" v{number}" if number else ""))
    return version


# --- members ---------------------------------------------------------------------------------------


@transaction.atomic
def membership_set(*, actor, study: Study, username: str, role: str) -> Membership:
    """Give `username` the role on the study (add or change). Owners only; the last owner stays an owner."""
    if actor is not None:
        study_get_for_researcher(user=actor, slug=study.slug, needs="members")
    if role not in Membership.Role.values:
        raise MembershipError(f"unknown role {role!r}; use one of: {', '.join(Membership.Role.values)}")
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise MembershipError(f"no researcher named {username!r}")
    Study.objects.select_for_update().get(pk=study.pk)  # member changes of one study queue here
    membership = Membership.objects.filter(study=study, user=user).first()
    if membership is not None and membership.role == role:
        return membership
    if membership is not None and membership.role == Membership.Role.OWNER and _owners(study) == 1:
        raise MembershipError(f"{username} is the last owner of {study.slug}; make someone else an owner first")
    before = None if membership is None else {"role": membership.role}
    if membership is None:
        membership = Membership.objects.create(study=study, user=user, role=role)
    else:
        membership.role = role
        membership.save(update_fields=["role"])
    audit_record(
        actor=actor, action="member_add" if before is None else "member_change", study_slug=study.slug,
        object_type="membership", object_id=username, before=before, after={"role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor, study: Study, username: str) -> None:
    """Remove `username` from the study. Owners only; the last owner cannot be removed."""
    if actor is not None:
        study_get_for_researcher(user=actor, slug=study.slug, needs="members")
    Study.objects.select_for_update().get(pk=study.pk)
    membership = Membership.objects.filter(study=study, user__username=username).first()
    if membership is None:
        raise MembershipError(f"{username!r} is not a member of {study.slug}")
    if membership.role == Membership.Role.OWNER and _owners(study) == 1:
        raise MembershipError(f"{username} is the last owner of {study.slug}; make someone else an owner first")
    membership.delete()
    audit_record(
        actor=actor, action="member_remove", study_slug=study.slug, object_type="membership",
        object_id=username, before={"role": membership.role}, after=None,
    )


def _owners(study: Study) -> int:
    return Membership.objects.filter(study=study, role=Membership.Role.OWNER).count()

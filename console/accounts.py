"""Researcher accounts: what a password change and the deletion of an account do to tokens, roles and the trail.

- A password change, wherever it is made (the console's page, the admin, `manage.py changepassword`,
  `researcher_create` for an existing name), revokes the account's active API tokens and is audited.
  The hook is Django's own: `User.save()` calls `password_changed()` of every AUTH_PASSWORD_VALIDATORS
  entry after `set_password`, and `RevokeApiTokensOnPasswordChange` is one (it validates nothing).
- Deleting an account (`researcher_delete`, used by the admin) is audited per role it held, and refused
  when it would leave a study without an owner. `membership_pre_delete` holds the same rule for every
  other way a membership can disappear (a shell's `user.delete()`, a cascade), and audits the roles a
  shell deletion of an account takes away.
"""
import contextvars
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import ProtectedError, QuerySet
from django.utils import timezone

from studies.audit import audit_record
from studies.models import Membership, Study

from .models import ApiToken

PRIVILEGE_FIELDS = ("is_active", "is_staff", "is_superuser")

_actor = contextvars.ContextVar("password_change_actor", default=None)


class LastOwnerError(ProtectedError):
    """The change would leave a study without an owner."""


# --- password changes ---------------------------------------------------------------------------


@contextmanager
def password_change_by(actor):
    """Name who changes a password inside this block (a view's request.user); outside it is `system`."""
    reset = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(reset)


def api_tokens_active_count(*, user) -> int:
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() if user.pk else 0


@transaction.atomic
def api_tokens_revoke_for_password_change(*, user) -> int:
    """Revoke every active token of `user` (their password just changed) and audit it; return how many.

    Audited as `password_change` when tokens were revoked or the account has logged in before; the first
    password of a new account writes nothing.
    """
    if user.pk is None:
        return 0
    revoked = ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if revoked or user.last_login is not None:
        audit_record(actor=_actor.get(), action="password_change", object_type="account",
                     object_id=user.get_username(), after={"api_tokens_revoked": revoked})
    return revoked


class RevokeApiTokensOnPasswordChange:
    """An AUTH_PASSWORD_VALIDATORS entry that checks nothing: its `password_changed` revokes the API tokens."""

    def validate(self, password, user=None):
        return None

    def password_changed(self, password, user=None):
        if user is not None:
            api_tokens_revoke_for_password_change(user=user)

    def get_help_text(self):
        return "Changing the password revokes every API token of the account."


# --- deleting accounts and memberships ----------------------------------------------------------


def _orphaned(*, users) -> list[str]:
    """The slugs of the studies whose every owner is among `users`."""
    user_ids = [u.pk for u in users]
    owned = Membership.objects.filter(user_id__in=user_ids, role=Membership.Role.OWNER).values_list("study_id", flat=True)
    kept = Membership.objects.filter(study_id__in=owned, role=Membership.Role.OWNER).exclude(user_id__in=user_ids)
    return sorted(Study.objects.filter(pk__in=owned).exclude(pk__in=kept.values("study_id"))
                  .values_list("slug", flat=True))


def researcher_delete_problems(*, users) -> list[str]:
    """Why these accounts may not be deleted (one line per study that would lose its last owner); [] if they may."""
    return [f"the last owner of the study {slug!r}: make someone else an owner first" for slug in _orphaned(users=users)]


@transaction.atomic
def researcher_delete(*, actor, users) -> int:
    """Delete these accounts; every role they held is audited as `member_remove`, each account as `account_delete`.

    Refused (LastOwnerError, nothing deleted) if a study would be left without an owner. The studies
    concerned are locked first, so this queues with `membership_set`/`membership_remove` on them.
    """
    users = list(users)
    study_ids = Membership.objects.filter(user__in=users).values_list("study_id", flat=True)
    list(Study.objects.select_for_update().filter(pk__in=study_ids).order_by("pk").values_list("pk", flat=True))
    problems = researcher_delete_problems(users=users)
    if problems:
        raise LastOwnerError("; ".join(problems), set())
    for user in users:
        memberships = list(Membership.objects.filter(user=user).select_related("study").order_by("study__slug"))
        for membership in memberships:
            audit_record(actor=actor, action="member_remove", study_slug=membership.study.slug,
                         object_type="membership", object_id=user.get_username(),
                         before={"role": membership.role}, after=None)
        Membership.objects.filter(user=user).delete()
        audit_record(actor=actor, action="account_delete", object_type="account", object_id=user.get_username(),
                     before={**{f: getattr(user, f) for f in PRIVILEGE_FIELDS},
                             "roles": {m.study.slug: m.role for m in memberships}}, after=None)
        user.delete()
    return len(users)


def account_privileges(*, user) -> dict:
    """What an account may do beyond its study roles: the flags, its groups and its own permissions."""
    return {**{f: getattr(user, f) for f in PRIVILEGE_FIELDS},
            "groups": sorted(user.groups.values_list("name", flat=True)),
            "user_permissions": sorted(user.user_permissions.values_list("codename", flat=True))}


def account_change_audit(*, actor, user, before: dict) -> None:
    """Audit what changed between `before` and now in `account_privileges` (a change made in the admin)."""
    after = account_privileges(user=user)
    changed = sorted(k for k in after if after[k] != before.get(k))
    if changed:
        audit_record(actor=actor, action="account_change", object_type="account", object_id=user.get_username(),
                     before={k: before.get(k) for k in changed}, after={k: after[k] for k in changed})


def _pks(origin, model) -> set:
    if isinstance(origin, model):
        return {origin.pk}
    if isinstance(origin, QuerySet) and issubclass(origin.model, model):
        return set(origin.values_list("pk", flat=True))
    return set()


def membership_pre_delete(sender, instance: Membership, origin=None, **kwargs):
    """Refuse deleting a study's last owner, however it is tried; audit roles lost by a shell account deletion.

    Connected to `pre_delete` of Membership (console.apps), the one place every deletion passes, cascades
    included. Deleting the study itself (its memberships go with it) is let through. `origin` is the
    object or queryset `.delete()` was called on.
    """
    if _pks(origin, Study):
        return
    if instance.role == Membership.Role.OWNER:
        list(Study.objects.select_for_update().filter(pk=instance.study_id).values_list("pk", flat=True))
        others = (Membership.objects.filter(study_id=instance.study_id, role=Membership.Role.OWNER)
                  .exclude(pk=instance.pk).exclude(pk__in=_pks(origin, Membership))
                  .exclude(user_id__in=_pks(origin, get_user_model())))
        if not others.exists():
            slug = Study.objects.filter(pk=instance.study_id).values_list("slug", flat=True).first()
            raise LastOwnerError(f"{instance.user.get_username()} is the last owner of the study {slug!r}: "
                                 "make someone else an owner first", {instance})
    if _pks(origin, get_user_model()):  # an account deleted without researcher_delete: audit the role it takes
        audit_record(actor=None, action="member_remove",
                     study_slug=Study.objects.filter(pk=instance.study_id).values_list("slug", flat=True).first() or "",
                     object_type="membership", object_id=instance.user.get_username(),
                     before={"role": instance.role}, after=None)

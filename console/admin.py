"""Admin pages of the console's rows and of researcher accounts.

API tokens and jobs are read-only: they change only through console.services (and are audited).
Accounts (django.contrib.auth's User) get `ResearcherAdmin`: deleting one is audited role by role and
refused when it would leave a study without an owner; changing `is_active`, `is_staff`, `is_superuser`,
groups or permissions is audited; changing a password revokes the account's API tokens (console.accounts)
and says so before and after; a superuser can lift a login lock (console.logins).
"""
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin, sensitive_post_parameters_m

from studies.admin import ReadOnlyAdmin

from . import accounts
from .logins import login_locked_until, login_unlock
from .models import ApiToken, Job

User = get_user_model()


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "name", "prefix", "scope", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["scope"]
    search_fields = ["user__username", "name", "prefix"]
    fields = ["user", "name", "prefix", "scope", "created_at", "last_used_at", "revoked_at"]  # never the hash
    readonly_fields = fields


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ["id", "study", "kind", "state", "progress", "created_by", "created_at", "finished_at", "size"]
    list_filter = ["kind", "state"]
    search_fields = ["study__slug"]
    fields = ["study", "kind", "options", "state", "progress", "created_by", "created_at", "started_at",
              "finished_at", "error", "filename", "size", "sha256"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("study", "created_by").defer("content")


@admin.action(description="Lift the login lock of the selected accounts")
def unlock_logins(modeladmin, request, queryset):
    if not request.user.is_superuser:
        modeladmin.message_user(request, "Only a superuser can lift a login lock here.", messages.ERROR)
        return
    lifted = [u.get_username() for u in queryset if login_unlock(actor=request.user, username=u.get_username())]
    modeladmin.message_user(request, f"Lifted the login lock of: {', '.join(lifted)}." if lifted
                            else "None of them was locked.", messages.SUCCESS)


if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class ResearcherAdmin(UserAdmin):
    change_user_password_template = "admin/console/user_change_password.html"
    actions = [unlock_logins]  # with the site's delete_selected, which goes through delete_queryset below
    list_display = [*UserAdmin.list_display, "is_superuser", "login_locked"]

    @admin.display(description="login locked until")
    def login_locked(self, obj):
        until = login_locked_until(usernames=[obj.get_username()]).get(obj.get_username())
        return f"{until:%H:%M} UTC" if until else ""

    # -- deleting: audited, and never a study's last owner --------------------------------------

    def get_deleted_objects(self, objs, request):
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed = set(perms_needed) - {ApiToken._meta.verbose_name}  # tokens go with their account
        problems = accounts.researcher_delete_problems(users=list(objs))
        return to_delete, model_count, perms_needed, [*protected, *problems]

    def delete_model(self, request, obj):
        accounts.researcher_delete(actor=request.user, users=[obj])

    def delete_queryset(self, request, queryset):
        accounts.researcher_delete(actor=request.user, users=queryset)

    # -- privileges: audited --------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        if change:
            request._account_before = accounts.account_privileges(user=User.objects.get(pk=obj.pk))
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        before = getattr(request, "_account_before", None)
        if before is None:
            return
        accounts.account_change_audit(actor=request.user, user=form.instance, before=before)

    # -- passwords: the tokens go, and the pages say so ------------------------------------------

    @sensitive_post_parameters_m
    def user_change_password(self, request, id, form_url=""):
        user = self.get_object(request, unquote(id))
        active = accounts.api_tokens_active_count(user=user) if user is not None else 0
        with accounts.password_change_by(request.user):
            response = super().user_change_password(request, id, form_url)
            changed = (request.method == "POST" and response.status_code == 302 and user is not None
                       and response["Location"] != request.get_full_path())  # not "conflicting form data"
            if changed and accounts.api_tokens_active_count(user=user):  # "disable password login" sets no password
                accounts.api_tokens_revoke_for_password_change(user=user)
        if changed:
            n = active
            self.message_user(request, f"{n} API token{'s' if n != 1 else ''} of {user.get_username()} "
                                       f"{'were' if n != 1 else 'was'} revoked.", messages.SUCCESS)
        elif hasattr(response, "context_data"):
            response.context_data["api_tokens_active"] = active
        return response


# The admin's own "change password" link (a superuser's own password): the same revocation, said the same way.
_site_password_change = admin.site.password_change


def _password_change(request, extra_context=None):
    active = accounts.api_tokens_active_count(user=request.user)
    with accounts.password_change_by(request.user):
        response = _site_password_change(request, extra_context)
    if request.method == "POST" and response.status_code == 302:
        messages.success(request, f"Your {active} API token{'s' if active != 1 else ''} "
                                  f"{'were' if active != 1 else 'was'} revoked.")
    return response


admin.site.password_change = _password_change

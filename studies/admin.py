from django.contrib import admin

from .models import AuditEvent, Membership, Study, StudyVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through services (audited or kept forever): the admin shows them, nothing more."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the view permission still shows every row

    def has_delete_permission(self, request, obj=None):
        return False


class StudyVersionInline(admin.TabularInline):
    model = StudyVersion
    fields = ["number", "state", "sha256", "target_sha256", "created_at", "launched_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


class MembershipInline(admin.TabularInline):
    """Who holds which role: shown, never changed here (roles change through studies.services, audited)."""

    model = Membership
    fields = ["user", "role", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "members (change them on the console's study page: owners only, audited)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "created_at"]
    readonly_fields = ["slug", "title", "created_at"]
    inlines = [StudyVersionInline, MembershipInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # it would take every participant's data and the members with it, unaudited


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only: the trail is append-only (a trigger refuses changes anyway); `manage.py audit_verify` checks it."""

    list_display = ["at", "actor", "action", "study_slug", "object_type", "object_id"]
    list_filter = ["action", "study_slug"]
    search_fields = ["actor", "study_slug", "object_id"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

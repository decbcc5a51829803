"""Read-only admin for API tokens and jobs: rows change only through console.services (and are audited)."""
from django.contrib import admin

from studies.admin import ReadOnlyAdmin

from .models import ApiToken, Job


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

from django.contrib import admin

from .models import Study, StudyVersion


class StudyVersionInline(admin.TabularInline):
    model = StudyVersion
    fields = ["number", "state", "sha256", "target_sha256", "created_at", "launched_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "created_at"]
    readonly_fields = ["slug", "title", "created_at"]
    inlines = [StudyVersionInline]

    def has_add_permission(self, request):
        return False

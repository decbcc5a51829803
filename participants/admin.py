from django.contrib import admin

from .models import Participant


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    """Read-only: participants change only through their own journey."""

    list_display = ["id", "pseudonym", "study", "arm", "form_order", "step", "status", "is_pilot", "is_simulated", "created_at"]
    list_filter = ["study", "arm", "step", "status", "is_simulated"]
    search_fields = ["pseudonym"]
    exclude = ["token", "pid_hash", "session_hash"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields if f.name not in self.exclude]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

import json

from django.contrib import admin
from django.utils.html import format_html

from studies.admin import ReadOnlyAdmin

from .models import Conversation, LearnerModelSnapshot, LLMCall, PostTestPrediction, Turn


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class TurnInline(ReadOnlyInline):
    model = Turn
    fk_name = "conversation"
    fields = ["id", "author", "act", "concept", "text", "status", "check_correct", "created_at"]
    readonly_fields = fields


class SnapshotInline(ReadOnlyInline):
    model = LearnerModelSnapshot
    fields = ["index", "turn", "source", "mastery", "why"]
    readonly_fields = fields

    @admin.display(description="mastery per concept")
    def mastery(self, obj):
        return ", ".join(f"{c} {v['mastery']:.2f}" for c, v in obj.state["concepts"].items())

    @admin.display(description="why it changed")
    def why(self, obj):
        return obj.state.get("why", "")


class PredictionInline(ReadOnlyInline):
    model = PostTestPrediction
    fields = ["item_id", "p_correct", "predicted_answer", "source"]
    readonly_fields = fields


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """Read-only: a conversation with its turns, its learner-model timeline and the explainer's predictions."""

    list_display = ["id", "arm", "version", "language", "scripted", "started_at", "ended_at", "end_reason"]
    list_filter = ["arm", "scripted", "end_reason"]
    readonly_fields = ["version", "version_sha256", "arm", "language", "scripted", "started_at", "ended_at",
                       "end_reason", "meeting_note"]
    inlines = [TurnInline, SnapshotInline, PredictionInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LearnerModelSnapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    list_display = ["id", "conversation", "index", "source", "created_at"]
    list_filter = ["source"]
    readonly_fields = ["conversation", "index", "turn", "source", "schema_version", "pretty_state", "created_at"]
    exclude = ["state"]

    @admin.display(description="state")
    def pretty_state(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.state, indent=2, ensure_ascii=False))


@admin.register(LLMCall)
class LLMCallAdmin(admin.ModelAdmin):
    list_display = ["id", "turn", "purpose", "attempt", "status", "model_reported", "scripted", "ttft_ms",
                    "latency_ms", "input_tokens", "output_tokens", "cost_usd", "error_kind"]
    list_filter = ["status", "purpose", "scripted", "error_kind"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

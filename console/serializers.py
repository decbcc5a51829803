"""Input and output shapes of the API, one pair per operation. They validate and format; they decide nothing."""
from django.urls import reverse
from rest_framework import serializers

from participants.models import Participant, Step
from studies.models import Membership, StudyVersion

from .models import ApiToken, Job

STUDY_UPLOAD_MAX_BYTES = 20 * 1024 * 1024


# --- errors (documented in the schema for every operation) ---------------------------------------


class SpecErrorOut(serializers.Serializer):
    path = serializers.CharField(help_text="where in study.yaml, e.g. arms[1].weight ('' for the whole file)")
    message = serializers.CharField()
    file = serializers.CharField(help_text="the file the error is in (study.yaml or an asset)")
    line = serializers.IntegerField(allow_null=True, help_text="1-based line in `file`, when known")


class ErrorOut(serializers.Serializer):
    detail = serializers.CharField(help_text="what went wrong, for a person")
    code = serializers.CharField(required=False, help_text="a stable word for scripts (invalid, not_found, ...)")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="400 on invalid input: the messages per input field",
    )
    errors = SpecErrorOut(many=True, required=False, help_text="400 on an invalid study file: every mistake found")
    arms = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="400 on a launch refused: per arm that cannot run here, the reasons",
    )


# --- studies and versions -----------------------------------------------------------------------


class VersionOut(serializers.ModelSerializer):
    class Meta:
        model = StudyVersion
        fields = ["number", "state", "sha256", "target_sha256", "created_at", "launched_at", "launch_waivers"]


class StudyListOut(serializers.Serializer):
    slug = serializers.SlugField()
    title = serializers.CharField()
    role = serializers.ChoiceField(choices=Membership.Role.choices, help_text="your role on the study")
    state = serializers.ChoiceField(
        choices=StudyVersion.State.choices, allow_null=True,
        help_text="of the current version: the live or paused one, else the newest",
    )
    version = serializers.IntegerField(allow_null=True, help_text="the current version's number")
    created_at = serializers.DateTimeField()


class StudyDetailOut(serializers.Serializer):
    slug = serializers.SlugField()
    title = serializers.CharField()
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    created_at = serializers.DateTimeField()
    current_version = VersionOut(allow_null=True)
    versions = serializers.IntegerField(help_text="how many versions the study has")
    participants = serializers.IntegerField(help_text="participants in all versions, pilots and bots included")


class StudyUploadIn(serializers.Serializer):
    file = serializers.FileField(
        help_text="study.yaml, or a .zip of the study folder (study.yaml at its root or in one top folder)",
    )

    def validate_file(self, value):
        if value.size > STUDY_UPLOAD_MAX_BYTES:
            raise serializers.ValidationError(f"is larger than {STUDY_UPLOAD_MAX_BYTES // (1024 * 1024)} MB")
        return value


class StudyUploadOut(serializers.Serializer):
    study = serializers.SlugField()
    created = serializers.BooleanField(help_text="false: the file is identical to the newest version")
    version = VersionOut()


class StudyLaunchIn(serializers.Serializer):
    number = serializers.IntegerField(
        required=False, min_value=1, max_value=2_147_483_647, help_text="the draft to launch (default: the newest)"
    )
    allow = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100,
        help_text="arms to launch although they cannot run here; recorded on the version as waivers",
    )


class VersionDiffIn(serializers.Serializer):
    a = serializers.IntegerField(min_value=1, max_value=2_147_483_647, help_text="version number")
    b = serializers.IntegerField(min_value=1, max_value=2_147_483_647, help_text="version number")


class VersionDiffOut(serializers.Serializer):
    a = serializers.IntegerField()
    b = serializers.IntegerField()
    diff = serializers.CharField(allow_blank=True, help_text="a unified diff of the two study files ('' if equal)")


# --- arms ---------------------------------------------------------------------------------------


class ArmBudgetOut(serializers.Serializer):
    seats_used = serializers.IntegerField(help_text="places held against max_completers (completers and people inside)")
    completers = serializers.IntegerField(help_text="completed, without pilots and simulated participants")
    max_completers = serializers.IntegerField(allow_null=True, help_text="null: no cap")
    cost_usd = serializers.FloatField(help_text="LLM cost of the arm so far")
    max_cost_usd = serializers.FloatField(allow_null=True, help_text="null: no cap")
    max_tokens_per_participant = serializers.IntegerField(allow_null=True)
    open = serializers.BooleanField(help_text="false: allocation sends nobody there (a cap reached, or not runnable)")


class ArmOut(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.CharField()
    weight = serializers.IntegerField()
    label = serializers.CharField(allow_blank=True)
    version = serializers.IntegerField(help_text="the version the counts are of")
    allocated = serializers.IntegerField()
    active = serializers.IntegerField()
    completed = serializers.IntegerField()
    completed_counted = serializers.IntegerField(help_text="completed, without pilots and simulated participants")
    withdrawn = serializers.IntegerField()
    simulated = serializers.IntegerField()
    pilot = serializers.IntegerField()
    budget = ArmBudgetOut(help_text="the arm's caps from the study file and how much of them is used")


# --- participants -------------------------------------------------------------------------------


class ParticipantListIn(serializers.Serializer):
    arm = serializers.CharField(required=False, max_length=64)
    step = serializers.ChoiceField(choices=Step.choices, required=False)
    status = serializers.ChoiceField(choices=Participant.Status.choices, required=False)
    simulated = serializers.BooleanField(required=False, allow_null=True, default=None,
                                         help_text="true: bots only; false: no bots")
    pilot = serializers.BooleanField(required=False, allow_null=True, default=None,
                                     help_text="true: pilots only; false: no pilots")


class IntegrityOut(serializers.Serializer):
    paste_count = serializers.IntegerField()
    hidden_ms = serializers.IntegerField()
    visibility_changes = serializers.IntegerField()
    pages_reloaded = serializers.IntegerField()


class ParticipantOut(serializers.Serializer):
    pseudonym = serializers.CharField()
    version = serializers.IntegerField(source="version.number")
    arm = serializers.CharField(allow_blank=True)
    step = serializers.ChoiceField(choices=Step.choices)
    status = serializers.ChoiceField(choices=Participant.Status.choices)
    is_pilot = serializers.BooleanField()
    is_simulated = serializers.BooleanField()
    language = serializers.CharField()
    created_at = serializers.DateTimeField()
    consented_at = serializers.DateTimeField(allow_null=True)
    allocated_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField()
    integrity = IntegrityOut(allow_null=True, help_text="the browser's signals over all pages; null: no page seen")


class ErasedOut(serializers.Serializer):
    erased = serializers.IntegerField(help_text="how many participants were erased (1)")
    version = serializers.IntegerField()
    arm = serializers.CharField(allow_blank=True)
    step = serializers.CharField()
    status = serializers.CharField()


class LLMCallOut(serializers.Serializer):
    id = serializers.IntegerField()
    purpose = serializers.CharField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    model_reported = serializers.CharField(allow_blank=True)
    scripted = serializers.BooleanField()
    started_at = serializers.DateTimeField()
    ttft_ms = serializers.IntegerField(allow_null=True)
    latency_ms = serializers.IntegerField(allow_null=True)
    input_tokens = serializers.IntegerField(allow_null=True)
    output_tokens = serializers.IntegerField(allow_null=True)
    cost_usd = serializers.FloatField(allow_null=True)
    error_kind = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    http_status = serializers.IntegerField(allow_null=True)
    retry_after_s = serializers.FloatField(allow_null=True)


class SnapshotOut(serializers.Serializer):
    index = serializers.IntegerField()
    source = serializers.CharField()
    schema_version = serializers.IntegerField()
    state = serializers.JSONField(
        help_text="the learner model (docs/agentic.md): concepts, misconceptions, next_goal, why")
    created_at = serializers.DateTimeField()


class MasteryChangeOut(serializers.Serializer):
    before = serializers.FloatField(allow_null=True)
    after = serializers.FloatField(allow_null=True)
    delta = serializers.FloatField(allow_null=True)


class GoalChangeOut(serializers.Serializer):
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class ChangesOut(serializers.Serializer):
    mastery = serializers.DictField(child=MasteryChangeOut(), help_text="per concept whose mastery changed")
    misconceptions_added = serializers.ListField(child=serializers.CharField())
    misconceptions_removed = serializers.ListField(child=serializers.CharField())
    next_goal = GoalChangeOut(allow_null=True, help_text="null: unchanged")
    why = serializers.CharField(allow_blank=True)


class TurnOut(serializers.Serializer):
    id = serializers.IntegerField()
    author = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    reply_to = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    first_token_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    scripted = serializers.BooleanField()
    act = serializers.CharField(allow_blank=True, help_text="the explainer's pedagogical act")
    concept = serializers.CharField(allow_blank=True)
    check_item = serializers.CharField(allow_blank=True)
    answers_check = serializers.IntegerField(allow_null=True, help_text="the check question this turn answers")
    check_correct = serializers.BooleanField(allow_null=True)
    tool_calls = serializers.JSONField()
    error_kind = serializers.CharField(allow_blank=True)
    llm_calls = LLMCallOut(many=True)
    snapshot = SnapshotOut(allow_null=True, help_text="the learner model after this turn")
    changes = ChangesOut(allow_null=True, help_text="what changed since the previous snapshot")


class TranscriptParticipantOut(serializers.Serializer):
    pseudonym = serializers.CharField()
    version = serializers.IntegerField()
    arm = serializers.CharField(allow_blank=True)
    arm_kind = serializers.CharField(allow_blank=True)
    step = serializers.CharField()
    status = serializers.CharField()
    language = serializers.CharField()
    is_pilot = serializers.BooleanField()
    is_simulated = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    consented_at = serializers.DateTimeField(allow_null=True)
    allocated_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)


class ConversationOut(serializers.Serializer):
    arm = serializers.CharField()
    language = serializers.CharField()
    scripted = serializers.BooleanField()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    end_reason = serializers.CharField(allow_blank=True)
    meeting_note = serializers.CharField(allow_blank=True)


class TranscriptOut(serializers.Serializer):
    participant = TranscriptParticipantOut()
    conversation = ConversationOut(allow_null=True, help_text="null: the participant's arm has no conversation")
    initial_snapshot = SnapshotOut(allow_null=True, help_text="the learner model from the pre-test")
    turns = TurnOut(many=True)


# --- export and report jobs ---------------------------------------------------------------------


class ExportStartIn(serializers.Serializer):
    format = serializers.ChoiceField(choices=["csv", "parquet", "jsonl"], default="csv")
    tables = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, allow_empty=False, max_length=20,
        help_text="the tables to include (default: all; docs/export.md); codebook and manifest always",
    )
    include_simulated = serializers.BooleanField(default=True)
    include_pilot = serializers.BooleanField(default=False)

    def validate_tables(self, value):
        from analysis.codebook import TABLE_NAMES

        unknown = sorted(set(value) - set(TABLE_NAMES))
        if unknown:
            raise serializers.ValidationError(f"unknown tables: {', '.join(unknown)}; known: {', '.join(TABLE_NAMES)}")
        return value


class ReportStartIn(serializers.Serializer):
    include_simulated = serializers.BooleanField(default=False)
    include_pilot = serializers.BooleanField(default=False)


class JobOut(serializers.ModelSerializer):
    state = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "kind", "state", "progress", "options", "created_at", "started_at", "finished_at", "error",
                  "filename", "size", "sha256", "download_url"]

    def get_state(self, job) -> str:
        return Job.State.FAILED if job.is_lost else job.state

    def get_error(self, job) -> str:
        return "the worker running this job was lost; start it again" if job.is_lost else job.error

    def get_download_url(self, job) -> str | None:
        if job.state != Job.State.DONE:
            return None
        name = "api:export-download" if job.kind == Job.Kind.EXPORT else "api:report-download"
        return reverse(name, kwargs={"slug": job.study.slug, "job_id": job.pk})


# --- members and tokens -------------------------------------------------------------------------


class MemberOut(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    created_at = serializers.DateTimeField()


class MemberSetIn(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class TokenOut(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "scope", "created_at", "last_used_at"]


class TokenCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(choices=ApiToken.Scope.choices)


class TokenCreatedOut(TokenOut):
    key = serializers.CharField(help_text="the secret; shown this once, only its hash is stored")

    class Meta(TokenOut.Meta):
        fields = [*TokenOut.Meta.fields, "key"]


from django.conf import settings
from django.db import models
from django.db.models import Q

from studies.models import StudyVersion


class Conversation(models.Model):
    """One participant's conversation with the explainer of their arm."""

    class EndReason(models.TextChoices):
        PARTICIPANT = "participant"
        TURNS = "turns"
        MINUTES = "minutes"
        TOKENS = "tokens"
        COMPLETE = "complete"  # the explainer summarised: nothing left to teach

    version = models.ForeignKey(StudyVersion, on_delete=models.PROTECT, related_name="conversations")
    version_sha256 = models.CharField(max_length=64)
    arm = models.CharField(max_length=64)
    language = models.CharField(max_length=10, default="en")
    scripted = models.BooleanField(default=False, help_text="replies come from the scripted demo model")
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=16, choices=EndReason.choices, blank=True)
    meeting_note = models.TextField(blank=True, help_text="the explainer's summary at the end of the step")
    learner_model_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="learner_model: mismatched: the conversation whose snapshots the explainer was shown",
    )
    yoked_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="a yoked static arm: the transcript shown (empty: none was available, the material was shown)",
    )

    def __str__(self) -> str:
        return f"conversation {self.pk} ({self.arm})"


class Turn(models.Model):
    """One chat message. A participant's turn gets exactly one explainer turn as its reply."""

    class Author(models.TextChoices):
        PARTICIPANT = "participant"
        EXPLAINER = "explainer"

    class Status(models.TextChoices):
        PENDING = "pending"    # a participant's turn waiting for its reply
        ANSWERED = "answered"  # a participant's turn with its reply
        FAILED = "failed"      # attempts ran out; the participant may send it again
        COMPLETE = "complete"  # an explainer's turn

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    author = models.CharField(max_length=12, choices=Author.choices)
    text = models.TextField()
    reply_to = models.OneToOneField(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="reply"
    )
    status = models.CharField(max_length=10, choices=Status.choices)
    client_nonce = models.CharField(max_length=64, blank=True)
    scripted = models.BooleanField(default=False)
    act = models.CharField(max_length=16, blank=True, help_text="the explainer's pedagogical act")
    concept = models.CharField(max_length=64, blank=True, help_text="the concept the explainer's turn targets")
    check_item = models.CharField(max_length=64, blank=True, help_text="the practice item a check question asks")
    answers_check = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="check_answers",
        help_text="the explainer's check question this participant turn answers",
    )
    check_correct = models.BooleanField(null=True, blank=True)
    tool_calls = models.JSONField(
        default=list, blank=True,
        help_text="the target tools the explainer called for this turn: name, arguments, result, refused",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True, help_text="no provider call before (Retry-After)")
    first_token_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    shown_text = models.TextField(
        blank=True, help_text="a reply cut off mid-stream: the text the participant saw before it stopped",
    )

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_nonce"], condition=~Q(client_nonce=""), name="turn_nonce_unique"
            ),
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(author="explainer", reply_to__isnull=True),
                name="turn_one_opening_per_conversation",
            ),
        ]
        indexes = [models.Index(fields=["status", "enqueued_at"])]

    def __str__(self) -> str:
        return f"{self.author} turn {self.pk}"

    @property
    def cut_off(self) -> bool:
        """The reply to this turn failed after some of its text had been shown."""
        return self.status == self.Status.FAILED and bool(self.shown_text)


class TranscriptScreening(models.Model):
    """The screen one conversation's transcript passes before a yoked participant may read it.

    `turns` holds the redacted text a yoked participant reads (explainers/screening.py says how it was
    redacted); the conversation's own turns, the participant's data, are never changed. A transcript of
    `redact` mode passes when it is redacted; one of `approve` mode waits for a researcher's decision,
    which is audited.
    """

    class Mode(models.TextChoices):
        REDACT = "redact"    # the automatic screen alone
        APPROVE = "approve"  # the automatic screen, then a researcher's approval

    class Status(models.TextChoices):
        PENDING = "pending"    # waiting for a researcher
        PASSED = "passed"      # may be shown
        REJECTED = "rejected"  # never shown

    conversation = models.OneToOneField(Conversation, on_delete=models.CASCADE, related_name="screening")
    mode = models.CharField(max_length=8, choices=Mode.choices)
    status = models.CharField(max_length=8, choices=Status.choices)
    rules_version = models.PositiveSmallIntegerField(help_text="the version of the redaction rule applied")
    turns = models.JSONField(help_text="what a yoked participant reads: [{turn, author, text}] with text redacted")
    redactions = models.JSONField(default=dict, blank=True, help_text="replacements made, by kind: link, email, phone, name")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True, help_text="when it passed or was rejected")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="the researcher who approved or rejected it (empty: the automatic screen)",
    )

    class Meta:
        indexes = [models.Index(fields=["status", "decided_at"], name="screening_status_decided")]

    def __str__(self) -> str:
        return f"screening of conversation {self.conversation_id} ({self.status})"


class LLMCall(models.Model):
    """One request to a provider: one attempt, logged whatever its outcome."""

    class Status(models.TextChoices):
        STARTED = "started"  # never finished: the worker was lost mid-call
        OK = "ok"
        ERROR = "error"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="llm_calls")
    purpose = models.CharField(max_length=32, default="reply")
    attempt = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.STARTED)
    provider = models.CharField(max_length=16)
    model = models.CharField(max_length=200)
    model_reported = models.CharField(max_length=200, blank=True)
    scripted = models.BooleanField(default=False)
    request = models.JSONField()
    response = models.JSONField(null=True, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    retry_after_s = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField()
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="empty when the arm's model has no price",
    )
    version_sha256 = models.CharField(max_length=64)
    tool_choice = models.CharField(max_length=16, blank=True, help_text="the tool choice sent: auto, required, none")
    structured_output = models.CharField(
        max_length=16, blank=True, help_text="how structured output was asked for: json_schema, json_object, instructions",
    )
    fallback_reason = models.CharField(
        max_length=300, blank=True, help_text="why this call used a fallback (a required tool round, a weaker output format)",
    )
    trimmed = models.JSONField(
        null=True, blank=True, help_text="what was left out to fit the context window: turns, material characters",
    )

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [models.UniqueConstraint(fields=["turn", "purpose", "attempt"], name="llm_call_attempt_unique")]

    def __str__(self) -> str:
        return f"{self.purpose} attempt {self.attempt} ({self.status})"


class LearnerModelSnapshot(models.Model):
    """The explainer's belief about the participant after a turn (index 0: from the pre-test). Never updated."""

    class Source(models.TextChoices):
        PRETEST = "pretest"
        RULES = "rules"
        LLM = "llm"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="snapshots")
    index = models.PositiveIntegerField()
    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, null=True, blank=True, related_name="snapshots")
    source = models.CharField(max_length=12, choices=Source.choices)
    schema_version = models.PositiveSmallIntegerField()
    state = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "index"]
        constraints = [models.UniqueConstraint(fields=["conversation", "index"], name="snapshot_index_unique")]

    def __str__(self) -> str:
        return f"snapshot {self.index} of conversation {self.conversation_id}"


class PostTestPrediction(models.Model):
    """The explainer's prediction of the participant's answer to a post-test item, made before the post-test."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="predictions")
    item_id = models.CharField(max_length=64)
    predicted_answer = models.JSONField(null=True, blank=True)
    p_correct = models.FloatField()
    source = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "item_id"], name="prediction_one_per_item")]

    def __str__(self) -> str:
        return f"prediction {self.item_id}"

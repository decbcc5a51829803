from django.db import models
from django.db.models import Q

from explainers.models import Conversation
from studies.models import Study, StudyVersion


class Step(models.TextChoices):
    CONSENT = "consent"
    PRE_TEST = "pre_test"
    EXPLANATION = "explanation"
    POST_TEST = "post_test"
    QUESTIONNAIRE = "questionnaire"
    DEBRIEF = "debrief"
    DONE = "done"


STEP_ORDER = list(Step.values)


class Participant(models.Model):
    """One person in one study. The recruiter's id is kept only as a keyed hash."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        COMPLETED = "completed"
        DECLINED = "declined"
        WITHDRAWN = "withdrawn"

    class FormOrder(models.TextChoices):
        AB = "AB"
        BA = "BA"

    token = models.CharField(max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="participants")
    pseudonym = models.CharField(
        max_length=24, blank=True, db_index=True,
        help_text="p_ + 16 hex of HMAC-SHA256(id): the participant's name in the console, the API and exports",
    )
    version = models.ForeignKey(StudyVersion, on_delete=models.PROTECT, related_name="participants")
    version_sha256 = models.CharField(max_length=64)
    pid_hash = models.CharField(max_length=64, null=True, blank=True)
    session_hash = models.CharField(max_length=64, blank=True)
    recruiter_study_id = models.CharField(max_length=64, blank=True)
    language = models.CharField(max_length=10, default="en")
    is_pilot = models.BooleanField(default=False)
    is_simulated = models.BooleanField(default=False)
    arm = models.CharField(max_length=64, blank=True)
    form_order = models.CharField(max_length=2, choices=FormOrder.choices, blank=True)
    stratum = models.CharField(max_length=32, blank=True)
    allocation_index = models.PositiveIntegerField(null=True, blank=True)
    allocated_at = models.DateTimeField(null=True, blank=True)
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.CONSENT)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    conversation = models.OneToOneField(
        Conversation, on_delete=models.PROTECT, null=True, blank=True, related_name="participant"
    )
    consent_version = models.CharField(max_length=64, blank=True)
    consent_sha256 = models.CharField(max_length=64, blank=True)
    consented_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "pid_hash"], name="participant_one_per_study_pid"),
            # blank only inside the creating transaction, before the id is known
            models.UniqueConstraint(fields=["study", "pseudonym"], condition=~Q(pseudonym=""),
                                    name="participant_one_per_study_pseudonym"),
        ]
        indexes = [models.Index(fields=["version", "arm"])]

    def __str__(self) -> str:
        return f"participant {self.pk} ({self.study_id})"

    @property
    def has_consented(self) -> bool:
        return self.consented_at is not None


class AllocationSequence(models.Model):
    """The running permuted-block sequence of one stratum of one study version (locked per allocation)."""

    version = models.ForeignKey(StudyVersion, on_delete=models.PROTECT, related_name="allocation_sequences")
    stratum = models.CharField(max_length=32)
    block_number = models.PositiveIntegerField(default=0)
    block = models.JSONField(default=list)
    position = models.PositiveIntegerField(default=0)
    arm_counts = models.JSONField(default=dict)
    total = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "stratum"], name="allocation_sequence_unique")]

    def __str__(self) -> str:
        return f"{self.version} / {self.stratum}"


class Response(models.Model):
    """One answer to one item in one phase; stored once."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="responses")
    phase = models.CharField(max_length=16)
    item_id = models.CharField(max_length=64)
    form = models.CharField(max_length=1, blank=True)
    concept = models.CharField(max_length=64, blank=True)
    value = models.JSONField()
    score = models.FloatField(null=True, blank=True)
    correct = models.BooleanField(null=True, blank=True)
    confidence = models.PositiveSmallIntegerField(null=True, blank=True)
    time_ms = models.PositiveBigIntegerField(null=True, blank=True)
    version_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["participant", "phase", "item_id"], name="response_one_per_item_phase"),
        ]

    def __str__(self) -> str:
        return f"{self.phase}:{self.item_id}"


class PageVisit(models.Model):
    """Server-side time on one page and the client's events there (visibility, pastes, first input)."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="page_visits")
    page = models.CharField(max_length=96)
    first_shown_at = models.DateTimeField()
    last_shown_at = models.DateTimeField()
    shown_count = models.PositiveIntegerField(default=1)
    submitted_at = models.DateTimeField(null=True, blank=True)
    server_ms = models.PositiveBigIntegerField(null=True, blank=True)
    client = models.JSONField(default=dict, blank=True)
    version_sha256 = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["participant", "page"], name="page_visit_unique")]

    def __str__(self) -> str:
        return self.page


class ErasedSpend(models.Model):
    """What erased participants' LLM calls cost, per version and arm: their calls are deleted, the money
    was spent. Budgets add it to the cost of the calls still stored. Holds no identifier."""

    version = models.ForeignKey(StudyVersion, on_delete=models.PROTECT, related_name="erased_spend")
    arm = models.CharField(max_length=64, blank=True)
    participants = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "arm"], name="erased_spend_one_per_arm")]

    def __str__(self) -> str:
        return f"{self.version} / {self.arm}: {self.participants} erased"


class ResumeLink(models.Model):
    """A one-time link that moves a participant's run to another browser. Only the token's hash is stored;
    the link works once, until `expires_at`."""

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="resume_links")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"resume link {self.pk} ({'used' if self.used_at else 'unused'})"

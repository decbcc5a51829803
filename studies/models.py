from django.db import models
from django.db.models import Q


class Study(models.Model):
    slug = models.SlugField(max_length=63, unique=True)
    title = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.slug


class StudyVersion(models.Model):
    """One frozen-on-launch version of a study file. A live version never changes."""

    class State(models.TextChoices):
        DRAFT = "draft"
        LIVE = "live"
        PAUSED = "paused"
        CLOSED = "closed"

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.DRAFT)
    spec = models.JSONField()
    sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=500, blank=True)
    target_sha256 = models.CharField(max_length=64, blank=True)
    target_keys = models.JSONField(default=dict, blank=True)
    target_info = models.JSONField(default=dict, blank=True, help_text="what was frozen with the keys")
    created_at = models.DateTimeField(auto_now_add=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    state_reason = models.CharField(
        max_length=16, blank=True, help_text="why the version is paused: 'budget' when its cost cap paused it"
    )
    llm_report = models.JSONField(
        null=True, blank=True,
        help_text="the latest llm_check of its LLM arms' endpoints: per arm what works, when and from which host",
    )
    launch_waivers = models.JSONField(
        default=dict, blank=True, help_text="arms launched although they could not run there: {arm: [reasons]}",
    )

    class Meta:
        ordering = ["study", "number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "number"], name="study_version_number_unique"),
            models.UniqueConstraint(
                fields=["study"], condition=Q(state__in=["live", "paused"]), name="study_one_open_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.study.slug} v{self.number} ({self.state})"

    @property
    def is_frozen(self) -> bool:
        return self.state != self.State.DRAFT


class StudyAsset(models.Model):
    """A file from the study folder (material, figures, data), stored with its version."""

    version = models.ForeignKey(StudyVersion, on_delete=models.CASCADE, related_name="assets")
    path = models.CharField(max_length=300)
    sha256 = models.CharField(max_length=64)
    content = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "path"], name="study_asset_path_unique")]

    def __str__(self) -> str:
        return self.path


class Membership(models.Model):
    """A researcher's role on one study. Access to a study goes only through `study_get_for_researcher`."""

    class Role(models.TextChoices):
        OWNER = "owner"      # everything, and manages members
        EDITOR = "editor"    # loads versions, launches, pauses, closes
        ANALYST = "analyst"  # reads participants' data, exports, reports
        VIEWER = "viewer"    # the monitor only

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "user"], name="membership_one_per_user")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.role} of {self.study_id}"


class AuditEvent(models.Model):
    """One researcher action that changed something. Append-only and hash-chained.

    `hash` is sha256 over the previous row's hash and this row's fields (`studies.audit`), so an
    edited or deleted row breaks the chain; a PostgreSQL trigger refuses UPDATE and DELETE.
    The actor is kept by id and name, not by foreign key, so that no later change touches the row.
    """

    at = models.DateTimeField()
    actor_id = models.IntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, help_text="username, or 'system' for automatic actions")
    action = models.CharField(max_length=64)
    study_slug = models.CharField(max_length=63, blank=True, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.study_slug}"


class AuditHead(models.Model):
    """The end of the audit chain: how many rows it has and the hash of the last one (one row, pk 1).

    `audit_record` updates it in the transaction that appends a row, so deleting the last rows of the
    chain (which leaves every remaining link intact) still shows: the count and the hash no longer match.
    A PostgreSQL trigger refuses deleting it and any update that does not add exactly one row.
    """

    count = models.PositiveBigIntegerField(default=0)
    last_id = models.BigIntegerField(null=True, blank=True)
    last_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"audit head: {self.count} rows, last {self.last_hash[:12]}"

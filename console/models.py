from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from studies.models import Study


class ApiToken(models.Model):
    """A researcher's personal API key. Only the sha256 of the key is stored; the key is shown once.

    The token acts as its user: it reaches exactly the studies the user holds a role on. A `read` token
    may only use safe methods (GET, HEAD, OPTIONS).
    """

    class Scope(models.TextChoices):
        READ = "read"
        WRITE = "write"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="the first characters of the key, to recognise it")
    key_sha256 = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=8, choices=Scope.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.scope}) of user {self.user_id}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


JOB_STALE_S = 3 * 60 * 60


class Job(models.Model):
    """A long researcher job (an export or a report) run by a Celery worker; its result is kept in the row.

    The zip lives in the database, not on a disk: the web and worker containers of deploy/compose.yaml
    share the database and no volume.
    """

    class Kind(models.TextChoices):
        EXPORT = "export"
        REPORT = "report"

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    options = models.JSONField(default=dict, blank=True, help_text="format and inclusion flags")
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    filename = models.CharField(max_length=200, blank=True)
    content_type = models.CharField(max_length=100, blank=True)
    size = models.PositiveBigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    content = models.BinaryField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="job_progress_at_most_100"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} of study {self.study_id} ({self.state})"

    @property
    def is_lost(self) -> bool:
        """Running for longer than any job takes: its worker died (the task is not redelivered)."""
        return self.state == self.State.RUNNING and self.started_at is not None \
            and timezone.now() - self.started_at > timedelta(seconds=JOB_STALE_S)

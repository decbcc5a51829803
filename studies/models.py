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

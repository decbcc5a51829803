"""The Celery app: `celery -A config worker`, and `celery -A config beat` beside it (docs/deploy.md, "Workers")."""
import os

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("teachback")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

EMBEDDED_BEAT_REFUSED = (
    "refusing to start a worker with an embedded beat (-B): in production the scheduler runs as its own "
    "process, exactly one per deployment (`celery -A config beat`; docs/deploy.md, \"Workers\"). A beat child "
    "outlives its worker's kill -9 and runs on orphaned, and two workers with -B run every periodic task "
    "twice. Set WORKER_BEAT_ALLOWED=1 only for a single-process setup such as the demo."
)


class RefuseEmbeddedBeat(bootsteps.Step):
    """Stop `celery worker -B` before it starts unless settings.WORKER_BEAT_ALLOWED (the demo, DEBUG)."""

    label = "RefuseEmbeddedBeat"

    def __init__(self, worker, beat=False, **kwargs):
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        super().__init__(worker, **kwargs)
        if beat and not settings.WORKER_BEAT_ALLOWED:
            raise ImproperlyConfigured(EMBEDDED_BEAT_REFUSED)


app.steps["worker"].add(RefuseEmbeddedBeat)

"""Celery tasks of the researcher side. Each unpacks an id and calls a service."""
from celery import shared_task

from . import services


# acks_late=False: an export can outlast the broker's visibility timeout (20 s), and an unacknowledged
# task would then be delivered again while it still runs. Acknowledged on receipt instead, a job whose
# worker dies stays `running` until it is JOB_STALE_S old, when the API reports it failed (docs/api.md).
@shared_task(acks_late=False, ignore_result=True)
def job_run_task(job_id: int) -> None:
    """Run one export or report job."""
    services.job_run(job_id=job_id)


# acks_late=False for the same reason: a run of bots waits out the study's minimum reading time (a minute
# or more) and must not be delivered again while it runs, which would send twice the bots.
@shared_task(acks_late=False, ignore_result=True)
def bots_run_task(run_id: str, slug: str, base_url: str, n: int) -> None:
    """Send the bots of one run from the study page against the site at `base_url` (console/bots.py)."""
    from .bots import bots_run

    bots_run(run_id=run_id, slug=slug, base_url=base_url, n=n)


@shared_task(ignore_result=True)
def monitor_refresh_task(study_id: int) -> None:
    """Recompute one study's monitor numbers into the cache (console/monitoring.py); safe to run twice."""
    from .monitoring import monitor_refresh

    monitor_refresh(study_id=study_id)

"""The audit trail: one append-only, hash-chained row per researcher action that changes something.

Write rows with `audit_record` inside the transaction that makes the change, so the row exists if
and only if the change does. `audit_verify` walks the chain and names every broken link.
"""
import hashlib
import json

from django.db import connection
from django.utils import timezone

from .models import AuditEvent

GENESIS = "0" * 64
_LOCK_KEY = 7_202_611  # pg_advisory_xact_lock key: one writer at a time extends the chain


def _digest(prev_hash: str, fields: dict) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _fields(event: AuditEvent) -> dict:
    return {
        "at": event.at.isoformat(), "actor_id": event.actor_id, "actor": event.actor, "action": event.action,
        "study_slug": event.study_slug, "object_type": event.object_type, "object_id": event.object_id,
        "before": event.before, "after": event.after,
    }


def audit_record(*, actor, action: str, study_slug: str = "", object_type: str = "", object_id="",
                 before=None, after=None) -> AuditEvent:
    """Append one audit row. `actor` is a user, or None for the system. Call inside the change's transaction.

    `before` and `after` must hold no participant identifier (pseudonyms only).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    event = AuditEvent(
        at=timezone.now(), actor_id=getattr(actor, "pk", None),
        actor=getattr(actor, "username", None) or "system", action=action, study_slug=study_slug,
        object_type=object_type, object_id=str(object_id), before=_jsonable(before), after=_jsonable(after),
        prev_hash=last or GENESIS,
    )
    event.hash = _digest(event.prev_hash, _fields(event))
    event.save()
    return event


def _jsonable(value):
    return None if value is None else json.loads(json.dumps(value, default=str))


def audit_verify() -> list[str]:
    """Walk the chain in id order; return one line per problem (an edited row, a deleted row), [] if intact."""
    problems = []
    prev_hash = GENESIS
    prev_id = None
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if event.prev_hash != prev_hash:
            problems.append(f"row {event.id}: the row before it (after row {prev_id}) was deleted or edited")
        if _digest(event.prev_hash, _fields(event)) != event.hash:
            problems.append(f"row {event.id}: its content was edited ({event.action} by {event.actor})")
        prev_hash, prev_id = event.hash, event.id
    return problems

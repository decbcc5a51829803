"""The audit trail: one append-only, hash-chained row per researcher action that changes something.

Write rows with `audit_record` inside the transaction that makes the change, so the row exists if
and only if the change does. `audit_verify` walks the chain and names every broken link; the head
(`AuditHead`: row count and last hash, updated with every row) shows rows deleted from the end.
docs/roles.md says what this catches and what it cannot.
"""
import hashlib
import json
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from .models import AuditEvent, AuditHead

GENESIS = "0" * 64
HEAD_PK = 1
SYSTEM = "system"


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

    `before` and `after` must hold no participant identifier (no PID hash, token or session hash).
    Writers queue on the head row's lock, so the chain never forks.
    """
    with transaction.atomic():
        head = _head_locked()
        event = AuditEvent(
            at=timezone.now(), actor_id=getattr(actor, "pk", None),
            actor=getattr(actor, "username", None) or SYSTEM, action=action, study_slug=study_slug,
            object_type=object_type, object_id=str(object_id), before=_jsonable(before), after=_jsonable(after),
            prev_hash=head.last_hash,
        )
        event.hash = _digest(event.prev_hash, _fields(event))
        event.save()
        head.count += 1
        head.last_id = event.id
        head.last_hash = event.hash
        head.save(update_fields=["count", "last_id", "last_hash"])
    return event


def _head_locked() -> AuditHead:
    head = AuditHead.objects.select_for_update().filter(pk=HEAD_PK).first()
    if head is None:  # a database migrated without the head row (it is created by a migration)
        AuditHead.objects.get_or_create(pk=HEAD_PK, defaults={"count": 0, "last_hash": GENESIS})
        head = AuditHead.objects.select_for_update().get(pk=HEAD_PK)
    return head


def _jsonable(value):
    return None if value is None else json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class AuditCheck:
    rows: int
    problems: list[str]
    last_hash: str  # record it somewhere else (a log, a ticket): it pins the whole chain up to now


def audit_check() -> AuditCheck:
    """Walk the chain in id order and compare its end with the head; one line per problem.

    Finds an edited row (its hash no longer matches its content), a deleted row in the chain (the next
    row's prev_hash no longer matches), and rows deleted at the end (the head's count and last hash).
    """
    problems = []
    prev_hash = GENESIS
    prev_id = None
    rows = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        rows += 1
        if event.prev_hash != prev_hash:
            where = f"after row {prev_id}" if prev_id is not None else "at the start of the chain"
            problems.append(f"row {event.id}: the row before it ({where}) was deleted or edited")
        if _digest(event.prev_hash, _fields(event)) != event.hash:
            problems.append(f"row {event.id}: its content was edited ({event.action} by {event.actor})")
        prev_hash, prev_id = event.hash, event.id
    head = AuditHead.objects.filter(pk=HEAD_PK).first()
    if head is None:
        if rows:
            problems.append(f"the audit head is missing ({rows} rows): it was deleted")
        return AuditCheck(rows, problems, prev_hash)
    if head.count > rows:
        problems.append(f"the head counts {head.count} rows but {rows} are left: {head.count - rows} row(s) were deleted")
    elif head.count < rows:
        problems.append(f"the head counts {head.count} rows but there are {rows}: rows were added outside audit_record")
    if head.last_hash != prev_hash:
        problems.append(f"the chain does not end at the head's last row (row {head.last_id}): "
                        "rows were deleted from the end, or the last row was edited")
    return AuditCheck(rows, problems, prev_hash)


def audit_verify() -> list[str]:
    """Return one line per problem of the audit chain; [] if it is intact."""
    return audit_check().problems

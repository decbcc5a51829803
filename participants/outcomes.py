"""What a run of bots or simulated learners got, per arm, read from the database: the selectors behind
`study_bots` and `study_simulate`, and the rule that says whether the run failed.

Reads only. Every count comes from the rows the server wrote (participants, turns, snapshots), never from
what the commands assumed; `run_problems` is a plain function of those counts, so it can be tested alone.
"""
from __future__ import annotations

import math
import time
from collections import Counter, defaultdict

from explainers.arms import LLM_ARM_KINDS
from explainers.models import LearnerModelSnapshot, Turn
from studies.models import Study, StudyVersion

from .models import Participant, Response
from .services import identifier_hash

CHAT_ARM_KINDS = frozenset({"chat", "agentic", "tutor"})
SNAPSHOT_SOURCES = tuple(LearnerModelSnapshot.Source.values)  # pretest, rules, llm


def run_participants(*, study: Study, pids: list[str]) -> dict[str, Participant]:
    """Return the run's participants found in this database, by the recruiter id they entered with."""
    by_hash = {identifier_hash(pid): pid for pid in pids}
    found = Participant.objects.filter(study=study, pid_hash__in=list(by_hash))
    return {by_hash[p.pid_hash]: p for p in found}


def run_pending_wait(*, conversation_ids: list[int], timeout_s: float) -> int:
    """Wait until no turn of these conversations waits for its reply (or the time is up); return how many still do.

    A bot leaves the chat once its wait for a reply is over; the worker may still be answering.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pending = Turn.objects.filter(conversation_id__in=conversation_ids, status=Turn.Status.PENDING).count()
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.5)


def run_outcomes(*, version: StudyVersion, participants: list[Participant]) -> list[dict]:
    """Return, per arm of the version (in the design's order), what these participants got.

    Each row: id, kind, weight, allocated, completed; for chat-type arms `sent` (participant turns) and
    their replies `answered`, `failed` (no text shown), `cut_off` (failed after some text was shown),
    `pending`; `openings` (explainer-first turns: written, failed, pending); `snapshots` by source; `tool_calls`
    (target-tool calls on explainer turns); `replies` and `scripted` (of them, from the scripted demo model).
    Four queries.
    """
    rows = {}
    for arm in version.spec["arms"]:
        rows[arm["id"]] = {
            "id": arm["id"], "kind": arm["kind"], "weight": int(arm.get("weight", 1)),
            "allocated": 0, "completed": 0, "sent": 0, "answered": 0, "failed": 0, "cut_off": 0, "pending": 0,
            "openings": Counter(), "snapshots": Counter(), "tool_calls": 0, "replies": 0, "scripted": 0,
        }
    arm_of: dict[int, str] = {}
    for p in participants:
        if not p.arm or p.arm not in rows:
            continue
        rows[p.arm]["allocated"] += 1
        rows[p.arm]["completed"] += p.status == Participant.Status.COMPLETED
        if p.conversation_id:
            arm_of[p.conversation_id] = p.arm
    if arm_of:
        conversations = list(arm_of)
        mine = Turn.objects.filter(conversation_id__in=conversations, author=Turn.Author.PARTICIPANT)
        for conversation_id, status, shown in mine.values_list("conversation_id", "status", "shown_text"):
            row = rows[arm_of[conversation_id]]
            row["sent"] += 1
            if status == Turn.Status.ANSWERED:
                row["answered"] += 1
            elif status == Turn.Status.FAILED:
                row["cut_off" if shown else "failed"] += 1
            else:
                row["pending"] += 1
        theirs = Turn.objects.filter(conversation_id__in=conversations, author=Turn.Author.EXPLAINER)
        for conversation_id, status, opening, scripted, tools in theirs.values_list(
                "conversation_id", "status", "reply_to_id", "scripted", "tool_calls"):
            row = rows[arm_of[conversation_id]]
            if opening is None:  # an explainer that speaks first
                row["openings"][status] += 1
            if status == Turn.Status.COMPLETE:
                row["replies"] += 1
                row["scripted"] += bool(scripted)
            row["tool_calls"] += len(tools or [])
        snapshots = LearnerModelSnapshot.objects.filter(conversation_id__in=conversations)
        for conversation_id, source in snapshots.values_list("conversation_id", "source"):
            rows[arm_of[conversation_id]]["snapshots"][source] += 1
    return list(rows.values())


def allocation_owes_every_arm(*, allocation: dict, arms: list[dict]) -> int:
    """How many allocated participants guarantee (or, for simple randomisation, all but guarantee: a
    chance below 1 in 1,000) that every arm with a weight got somebody.

    Blocked allocation fills whole blocks per stratum (strata: score bands × the two form orders when
    allocation waits for the pre-test), so every arm is owed someone once each stratum could have
    filled a block.
    """
    weights = [int(a.get("weight", 1)) for a in arms if int(a.get("weight", 1)) > 0]
    if not weights:
        return 0
    if allocation.get("method", "blocked") == "blocked":
        strata = (len(allocation.get("strata") or []) + 1) * 2 if allocation.get("when") == "after_pretest" else 1
        return int(allocation.get("block_size") or sum(weights)) * strata
    p_miss = 1 - min(weights) / sum(weights)  # one draw misses the lightest arm
    return len(weights) if p_miss <= 0 else max(len(weights), math.ceil(math.log(1e-3) / math.log(p_miss)))


def run_problems(*, arms: list[dict], participants: int, owed_after: int | None = None) -> list[str]:
    """Return one line per reason the run failed (empty: it did not).

    An LLM arm (chat, agentic) failed when it answered fewer replies than the turns it was sent, or an
    opening it owed was not written; an arm the design names (weight > 0) failed when it got nobody in a
    run of at least `owed_after` participants (`allocation_owes_every_arm`; default: as many as arms).
    """
    problems = []
    for arm in arms:
        if arm["kind"] in LLM_ARM_KINDS:
            unanswered = arm["sent"] - arm["answered"]
            not_opened = arm["openings"].get(Turn.Status.FAILED, 0) + arm["openings"].get(Turn.Status.PENDING, 0)
            if unanswered > 0 or not_opened:
                why = []
                if unanswered > 0:
                    why.append(f"answered {arm['answered']} of {arm['sent']} participant turns "
                               f"({arm['failed']} failed, {arm['cut_off']} cut off, {arm['pending']} unanswered)")
                if not_opened:
                    why.append(f"{not_opened} opening(s) not written")
                problems.append(f"arm {arm['id']} ({arm['kind']}): " + "; ".join(why))
    designed = [a for a in arms if a["weight"] > 0]
    if participants >= (len(designed) if owed_after is None else owed_after):
        for arm in designed:
            if not arm["allocated"]:
                problems.append(f"arm {arm['id']} ({arm['kind']}) got nobody of {participants} participants "
                                f"although the design gives it weight {arm['weight']}")
    return problems


def outcome_lines(arm: dict) -> list[str]:
    """Describe one arm's outcome in a few indented lines (for the commands' output)."""
    if arm["kind"] not in CHAT_ARM_KINDS:
        return []
    lines = [f"  turns: {arm['sent']} sent; replies {arm['answered']} answered, {arm['failed']} failed, "
             f"{arm['cut_off']} cut off, {arm['pending']} unanswered"]
    if arm["openings"]:
        o = arm["openings"]
        lines[0] += (f"; openings {o.get(Turn.Status.COMPLETE, 0)} written, {o.get(Turn.Status.FAILED, 0)} failed, "
                     f"{o.get(Turn.Status.PENDING, 0)} unwritten")
    snapshots = ", ".join(f"{source} {arm['snapshots'].get(source, 0)}" for source in SNAPSHOT_SOURCES)
    lines.append(f"  learner-model snapshots by source: {snapshots}" if arm["snapshots"]
                 else "  learner-model snapshots: none")
    if arm["kind"] in LLM_ARM_KINDS:
        if not arm["replies"]:
            model = "no reply was written"
        elif arm["scripted"] == arm["replies"]:
            model = "replies from the scripted demo model (not a real LLM)"
        elif arm["scripted"]:
            model = (f"replies from the scripted demo model for {arm['scripted']} of {arm['replies']}, "
                     "a real LLM for the rest")
        else:
            model = "replies from a real LLM (not the scripted demo model)"
        lines.append(f"  target-tool calls: {arm['tool_calls']}; {model}")
    else:
        lines.append("  replies from templates (no LLM)")
    return lines


def recovery_snapshots(*, conversation_ids: list[int]) -> dict[int, LearnerModelSnapshot]:
    """Return each conversation's last learner-model snapshot made after a participant's turn.

    The pre-test snapshot (index 0, no turn) is left out: it says what the pre-test said, not what the
    explainer learned in conversation. A conversation with none is not in the result.
    """
    latest: dict[int, LearnerModelSnapshot] = {}
    snapshots = (LearnerModelSnapshot.objects
                 .filter(conversation_id__in=conversation_ids, turn__isnull=False, index__gt=0)
                 .order_by("conversation_id", "index"))
    for snapshot in snapshots:
        latest[snapshot.conversation_id] = snapshot
    return latest


def scores_by_phase(*, participant_ids: list[int]) -> dict[int, dict[str, list[float]]]:
    """Return each participant's scored answers, by phase (pre_test, post_test)."""
    scores: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"pre_test": [], "post_test": []})
    rows = Response.objects.filter(participant_id__in=participant_ids, phase__in=("pre_test", "post_test"),
                                   score__isnull=False).values_list("participant_id", "phase", "score")
    for participant_id, phase, score in rows:
        scores[participant_id][phase].append(score)
    return scores


def run_report(*, version: StudyVersion, pids: list[str], results: list, settle_s: float) -> dict:
    """Return what can honestly be said of a run: per-arm counts from this database when the server wrote
    the run's participants here, else only what the bots' pages showed (a remote server).

    `results` are the bots' `BotResult`s. Keys: `source` ("database" or "pages"), `arms` (run_outcomes rows;
    empty for "pages"), `participants` (by pid), `lines` (for the pages: the summary), `problems`.
    """
    found = run_participants(study=version.study, pids=pids)
    if found:
        conversations = [p.conversation_id for p in found.values() if p.conversation_id]
        pending = run_pending_wait(conversation_ids=conversations, timeout_s=settle_s) if conversations else 0
        arms = run_outcomes(version=version, participants=list(found.values()))
        lines = [f"counts from the server's database ({len(found)} of {len(pids)} participants found"
                 + (f"; {pending} turn(s) still unanswered after waiting {settle_s:.0f} s" if pending else "") + ")"]
        return {"source": "database", "arms": arms, "participants": found, "lines": lines,
                "problems": run_problems(arms=arms, participants=sum(a["allocated"] for a in arms),
                                         owed_after=allocation_owes_every_arm(allocation=version.spec["allocation"],
                                                                              arms=version.spec["arms"]))}
    seen = [r.chat for r in results if r.chat is not None]
    total = {k: sum(getattr(c, k) for c in seen) for k in ("sent", "answered", "failed", "cut_off", "pending")}
    lines = [
        "the run's participants are not in this database (a remote server?): per-arm counts are unknown here, "
        "and participant pages do not show the arm; what the pages showed:",
        f"  {len(results) - len(seen)} bots saw no chat, {len(seen)} saw one "
        f"({sum(c.scripted for c in seen)} of them said the replies come from the scripted demo model)",
        f"  turns: {total['sent']} sent; replies {total['answered']} answered, {total['failed']} failed, "
        f"{total['cut_off']} cut off, {total['pending']} unanswered when the bot left",
    ]
    problems = []
    if total["answered"] < total["sent"]:
        problems.append(f"a chat arm answered {total['answered']} of the {total['sent']} turns the bots sent "
                        "(the pages do not name the arm: run against the server's database to see which)")
    return {"source": "pages", "arms": [], "participants": {}, "lines": lines, "problems": problems}


def arm_head(arm: dict) -> str:
    """One arm's first line: its id, kind, and who of the run it got."""
    return f"{arm['id']:<12} {arm['kind']:<8} allocated {arm['allocated']:>4}, completed {arm['completed']:>4}"


def conversations_with_learner_model(*, conversation_ids: list[int]) -> set[int]:
    """Return the conversations that have any learner-model snapshot (the pre-test one included)."""
    return set(LearnerModelSnapshot.objects.filter(conversation_id__in=conversation_ids)
               .values_list("conversation_id", flat=True).distinct())

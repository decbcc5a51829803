"""The example study's chat and agentic arms against a real small model, through the real HTTP flow.

Five participants (3 agentic, 2 chat) walk the study as bots over HTTP (live server, a real Celery worker
with beat); in the explanation step each sends several messages (the agentic ones answer the explainer's
check questions, right and wrong, and ask about concrete applicants). Then, per call kind, the figures
the issue's bar is about: success rate, time to first token and total time, fallbacks with their
recorded reasons, and target-tool calls. The table prints with `-s` and is written to
tests/artifacts/real_llm/figures.txt.

Every figure comes from the database rows the platform wrote (LLMCall, Turn, LearnerModelSnapshot,
PostTestPrediction), never from what the bots saw. A call succeeds when its result was used: a reply or
opening written from the model's own text (not a template standing in for an empty answer, not the
prompt or the participant's words echoed back), a learner model from the LLM (not the rules), every
post-test prediction and the note from the LLM.
"""
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connections

from explainers.models import Conversation, LearnerModelSnapshot, LLMCall, PostTestPrediction, Turn
from participants.bots import AnswerPolicy, bot_run
from participants.models import Participant
from participants.services import identifier_hash
from studies.protocol import Protocol
from studies.scoring import item_key
from studies.selectors import entry_link_token

from real_llm_support import real_endpoint, real_llm, real_study, real_study_folder, real_worker  # noqa: F401 (fixtures; a second conftest.py would shadow tests/conftest.py)

pytestmark = [pytest.mark.real_llm, pytest.mark.django_db(transaction=True)]

AGENTIC_MESSAGES = int(os.environ.get("REAL_LLM_AGENTIC_MESSAGES", "4"))
# explain, check, (wrong) correction, check, (wrong) correction, example: the example is the reply to the 5th
STRUGGLER_MESSAGES = int(os.environ.get("REAL_LLM_STRUGGLER_MESSAGES", "7"))
WEAK_CONCEPT = "all_three"  # measured twice in either pre-test form: the weakest after a pre-test wrong on it only
CHAT_MESSAGES = int(os.environ.get("REAL_LLM_CHAT_MESSAGES", "3"))
PARALLEL = int(os.environ.get("REAL_LLM_PARALLEL", "1"))  # participants at once (the server has 2 slots)
# Generous: a reply may take a learner update, tool rounds and retries at a few tokens a second. A turn
# still pending after this is counted as not answered, and the conversation stops there.
SETTLE_S = float(os.environ.get("REAL_LLM_SETTLE_S", "1200"))
SUCCESS_MIN = 0.9
_STRUGGLERS_LOCK = threading.Lock()

# Not check answers: questions a participant asks, about applicants that are none of the test cases
# (a tool call on a held-out case is refused), so the explainer has a reason to ask the model.
QUESTIONS = (
    "Would the model approve someone earning 60 k$ with a debt ratio of 0.30 and 1 late payment?",
    "ok",
    "What if that applicant had 3 late payments instead?",
    "Does the number of years in employment matter?",
)
CHAT_QUESTIONS = (
    "What matters most to the model?",
    "Would an applicant with an income of 50 k$, a debt ratio of 0.45 and no late payments be approved?",
    "Does a long credit history help?",
)
# Text of the prompts that a reply must never show the participant (a small model may echo its prompt).
PROMPT_MARKS = ("<learner_model>", "<next_move>", "<material>", "<concepts>", "<tools>", "<meeting_note_request",
                "<post_test>", "(The participant has opened the chat")
KINDS = (  # (arm kind, call kind) rows of the table
    ("chat", "reply"), ("agentic", "opening"), ("agentic", "reply"), ("agentic", "learner_update"),
    ("agentic", "posttest_prediction"), ("agentic", "meeting_note"),
)


# --------------------------------------------------------------------------- the participants


@dataclass
class Outcome:
    pid: str
    arm: str = ""
    completed: bool = False
    error: str = ""
    sent: int = 0
    refused: list[str] = field(default_factory=list)  # sends the server did not accept (HTTP status: body)
    unsettled: list[int] = field(default_factory=list)  # turns still pending after SETTLE_S


def _settled(turn_id: int) -> bool:
    """Wait until the turn is answered or failed (an opening: written or failed); False after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if Turn.objects.filter(pk=turn_id).exclude(status=Turn.Status.PENDING).exists():
            return True
        time.sleep(0.5)
    return False


class RealModelLearner:
    """A bot participant: the pre-test mostly wrong (something to teach), then a few messages.

    It reads the explainer's turns from the database by id (the page markup is not its business) and
    sends its messages through the chat endpoint, as the browser does. The first agentic participant
    struggles: right on the pre-test but for one concept, then wrong on every check and "ok" otherwise, so
    the policy works on that concept alone and, its check questions used up, shows it by example: the
    move that asks the target through a tool.
    """

    def __init__(self, version, outcome: Outcome, rng: random.Random, strugglers: list[str]):
        self.protocol = Protocol(version.spec)
        self.answers = AnswerPolicy("accuracy:0.2", self.protocol, version.target_keys, rng)
        self.outcome = outcome
        self.strugglers = strugglers  # shared: the first agentic participant struggles
        self.struggling = False
        forms = version.spec["instruments"]["pre_test"]["forms"]
        self.pretest = {i for form in forms.values() for i in form}

    def answer(self, item_id: str) -> dict:
        if not self.outcome.arm:  # allocated at consent: the first item is the pre-test's
            self.outcome.arm = Participant.objects.get(pid_hash=identifier_hash(self.outcome.pid)).arm
            with _STRUGGLERS_LOCK:
                if self.outcome.arm == "agentic" and not self.strugglers:
                    self.strugglers.append(self.outcome.pid)
                    self.struggling = True
        data = self.answers.answer(item_id)
        item = self.protocol.items[item_id]
        if self.struggling and item.get("options") and item_id in self.pretest:
            key = item_key(item, self.answers.target_keys)
            keys = key if isinstance(key, list) else [key]
            wrong = [o["id"] for o in item["options"] if o["id"] not in keys]
            right = item.get("concept") != WEAK_CONCEPT
            data["answer"] = (key if right else [wrong[0]] if item["kind"] == "multi_choice" else wrong[0])
        elif self.struggling and item_id in self.pretest and item["kind"] == "numeric":
            data["answer"] = str(item["key"])  # the numeric items are on other concepts
        return data

    def _conversation(self) -> Conversation:
        return Participant.objects.get(pid_hash=identifier_hash(self.outcome.pid)).conversation

    def _next_message(self, conversation: Conversation, n: int, asked: list[int]) -> str:
        if self.outcome.arm == "chat":
            return CHAT_QUESTIONS[n % len(CHAT_QUESTIONS)]
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if last is not None and last.status == Turn.Status.COMPLETE and last.check_item:
            item = self.protocol.items[last.check_item]
            asked.append(n)
            right = not self.struggling and len(asked) % 2 == 1  # right, wrong, right: a correction in between
            return item["key"] if right else next(o["id"] for o in item["options"] if o["id"] != item["key"])
        return "ok" if self.struggling else QUESTIONS[(n - len(asked)) % len(QUESTIONS)]

    def converse(self, client, slug: str, csrf: str) -> None:
        conversation = self._conversation()
        opening = conversation.turns.filter(author=Turn.Author.EXPLAINER, reply_to__isnull=True).first()
        if opening is not None and not _settled(opening.pk):
            self.outcome.unsettled.append(opening.pk)
            return
        asked: list[int] = []
        count = STRUGGLER_MESSAGES if self.struggling else AGENTIC_MESSAGES if self.outcome.arm == "agentic" else CHAT_MESSAGES
        for n in range(count):
            conversation.refresh_from_db()
            if conversation.ended_at:  # the explainer summarised: nothing more can be sent
                return
            text = self._next_message(conversation, n, asked)
            response = client.post(f"/s/{slug}/chat/send/", data={"text": text}, headers={"X-CSRFToken": csrf})
            if response.status_code != 202:
                self.outcome.refused.append(f"{response.status_code}: {response.text[:200]}")
                return
            self.outcome.sent += 1
            turn_id = response.json()["turn"]
            if not _settled(turn_id):
                self.outcome.unsettled.append(turn_id)
                return


def _participant_run(base_url: str, version, index: int, strugglers: list[str]) -> Outcome:
    outcome = Outcome(pid=f"real-llm-{index:02d}-{random.randrange(16 ** 8):08x}")
    try:
        token = entry_link_token(slug=version.study.slug, kind="simulated")
        policy = RealModelLearner(version, outcome, random.Random(index), strugglers)
        result = bot_run(base_url=base_url, slug=version.study.slug, policy=policy, link_token=token, pid=outcome.pid)
        outcome.completed, outcome.error = result.completed, result.error
    finally:
        connections.close_all()  # a worker thread's own connections, or dropping the test database fails
    return outcome


def _wrapups_settled(conversation_ids: list[int]) -> list[int]:
    """Wait until each agentic conversation's prediction and note calls have ended, the one retry of an unusable
    first note included; return those that did not."""
    def settled(conversation_id: int) -> bool:
        calls = list(LLMCall.objects.filter(turn__conversation_id=conversation_id,
                                            purpose__in=["posttest_prediction", "meeting_note"])
                     .values_list("purpose", "status", "fallback_reason"))
        if any(status == LLMCall.Status.STARTED for _p, status, _f in calls):
            return False
        notes = [why for purpose, _s, why in calls if purpose == "meeting_note"]
        retry_due = len(notes) == 1 and bool(notes[0])  # an unusable first note is asked for once more
        return {purpose for purpose, _s, _f in calls} == {"posttest_prediction", "meeting_note"} and not retry_due

    deadline = time.monotonic() + SETTLE_S
    waiting = list(conversation_ids)
    while waiting and time.monotonic() < deadline:
        waiting = [c for c in waiting if not settled(c)]
        if waiting:
            time.sleep(1)
    return waiting


# --------------------------------------------------------------------------- the figures


def _seconds(values_ms) -> str:
    values = [v / 1000 for v in values_ms if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def _text_of(call: LLMCall | None) -> str:
    return ((call.response or {}).get("text") or "").strip() if call is not None else ""


def _unusable(text: str, asked: str = "") -> str:
    """Why a model's text is not a usable message (its prompt echoed back, or the participant's own words), or ''."""
    for mark in PROMPT_MARKS:
        if mark in text:
            return f"it shows the prompt ({mark})"
    if asked and text.casefold() == asked.strip().casefold():
        return "it repeats the participant's message"
    return ""


def figures(version) -> dict:
    """Per (arm kind, call kind): units, successes, attempts, errors, TTFT and total times, waits; and the
    fallbacks (with the reason the platform recorded, or None) and the target-tool calls per conversation."""
    protocol = Protocol(version.spec)
    kind_of = {arm_id: arm["kind"] for arm_id, arm in protocol.arms.items()}
    calls = list(LLMCall.objects.filter(turn__conversation__version=version).select_related("turn__conversation")
                 .order_by("id"))
    rows = {k: {"units": 0, "ok": 0, "calls": [], "waits": []} for k in KINDS}
    fallbacks: list[dict] = []
    unusable: list[str] = []  # written by the model, but not a message anyone should read

    def call_kind(call: LLMCall) -> str:
        is_opening = call.purpose == "reply" and call.turn.author == Turn.Author.EXPLAINER and call.turn.reply_to_id is None
        return "opening" if is_opening else call.purpose

    for call in calls:
        key = (kind_of[call.turn.conversation.arm], call_kind(call))
        if key in rows:
            rows[key]["calls"].append(call)
        if call.fallback_reason:
            fallbacks.append({"what": f"{key[1]} call {call.pk} ({call.tool_choice or '-'}, "
                                      f"{call.structured_output or '-'})", "reason": call.fallback_reason})

    conversations = list(Conversation.objects.filter(version=version).order_by("id"))
    tools = {}
    for conversation in conversations:
        kind = kind_of[conversation.arm]
        turns = list(conversation.turns.order_by("id"))
        by_turn: dict[int, list[LLMCall]] = {}
        for call in calls:
            if call.turn.conversation_id == conversation.pk:
                by_turn.setdefault(call.turn_id, []).append(call)
        for turn in turns:
            replies = [c for c in by_turn.get(turn.pk, []) if c.purpose == "reply"]
            last_ok = next((c for c in reversed(replies) if c.status == LLMCall.Status.OK), None)
            if turn.author == Turn.Author.EXPLAINER and turn.reply_to_id is None:  # an opening
                row = rows[(kind, "opening")]
                done = turn.status == Turn.Status.COMPLETE
                written_at = turn.completed_at
            elif turn.author == Turn.Author.PARTICIPANT:
                row = rows[(kind, "reply")]
                done = turn.status == Turn.Status.ANSWERED
                reply = Turn.objects.filter(reply_to=turn).first()
                written_at = reply.completed_at if reply else None
            else:
                continue
            row["units"] += 1
            if written_at:
                row["waits"].append((written_at - turn.created_at).total_seconds() * 1000)
            asked = turn.text if turn.author == Turn.Author.PARTICIPANT else ""
            bad = _unusable(_text_of(last_ok), asked) if done and _text_of(last_ok) else ""
            templated = done and last_ok is not None and "templated text was sent" in (last_ok.fallback_reason or "")
            if templated:  # the platform refused the model's text (an echo, a repetition) and showed the template
                fallbacks.append({"what": f"{kind} turn {turn.pk}: the model's text could not be shown, a template was",
                                  "reason": last_ok.fallback_reason})
            elif bad:
                unusable.append(f"{kind} {'opening' if not asked else 'reply to'} turn {turn.pk}: {bad}: "
                                f"{_text_of(last_ok)[:80]!r}")
            elif done and _text_of(last_ok):
                row["ok"] += 1
            elif done:  # written, but not by the model: the move's template stood in for an empty answer
                fallbacks.append({"what": f"{kind} turn {turn.pk}: the model wrote nothing, a template was shown",
                                  "reason": None})
            else:
                errors = [f"{c.error_kind}: {c.error[:120]}" for c in replies if c.status == LLMCall.Status.ERROR]
                fallbacks.append({"what": f"{kind} turn {turn.pk} {turn.status}",
                                  "reason": turn.error_kind and "; ".join([turn.error_kind, *errors[-1:]])})
        if kind != "agentic":
            continue
        tools[conversation.pk] = {"calls": [entry for t in turns for entry in (t.tool_calls or [])],
                                  "example": any(t.act == "example" for t in turns)}  # a move that needs the target
        updates = rows[("agentic", "learner_update")]
        for snapshot in conversation.snapshots.filter(turn__isnull=False).order_by("index"):
            updates["units"] += 1
            if snapshot.source == LearnerModelSnapshot.Source.LLM:
                updates["ok"] += 1
            else:
                fallbacks.append({"what": f"learner model after turn {snapshot.turn_id}: {snapshot.source}",
                                  "reason": (snapshot.state.get("why") or "").strip() or None})
        wrapup = {p: [c for c in calls if c.turn.conversation_id == conversation.pk and c.purpose == p]
                  for p in ("posttest_prediction", "meeting_note")}
        predictions = list(PostTestPrediction.objects.filter(conversation=conversation))
        if predictions:
            row = rows[("agentic", "posttest_prediction")]
            row["units"] += 1
            if all(p.source == "llm" for p in predictions):
                row["ok"] += 1
            else:
                failed = [c for c in wrapup["posttest_prediction"] if c.status == LLMCall.Status.ERROR]
                reason = (f"{failed[-1].error_kind}: {failed[-1].error[:160]}" if failed else
                          "the call succeeded but its answer was not used" if wrapup["posttest_prediction"] else None)
                fallbacks.append({"what": f"post-test predictions of conversation {conversation.pk}: rules",
                                  "reason": reason})
        row = rows[("agentic", "meeting_note")]
        row["units"] += 1
        note_call = next((c for c in reversed(wrapup["meeting_note"]) if c.status == LLMCall.Status.OK), None)
        if _text_of(note_call) and _unusable(_text_of(note_call)):
            unusable.append(f"meeting note of conversation {conversation.pk}: {_unusable(_text_of(note_call))}")
        elif _text_of(note_call) and conversation.meeting_note.strip() == _text_of(note_call)[:4000]:
            row["ok"] += 1
        else:
            failed = [c for c in wrapup["meeting_note"] if c.status == LLMCall.Status.ERROR]
            fallbacks.append({"what": f"meeting note of conversation {conversation.pk}: template",
                              "reason": (f"{failed[-1].error_kind}: {failed[-1].error[:160]}" if failed
                                         else (note_call.fallback_reason or None) if note_call else None)})
    return {"rows": rows, "fallbacks": fallbacks, "tools": tools, "unusable": unusable}


def table(found: dict, outcomes: list[Outcome]) -> str:
    lines = [f"{'arm':<8} {'call kind':<20} {'ok/n':>7} {'rate':>5} {'calls':>5} {'errors':<24} "
             f"{'TTFT s med/max':>15} {'total s med/max':>16} {'wait s med/max':>15}"]
    for (arm, kind), row in found["rows"].items():
        calls = row["calls"]
        errors: dict[str, int] = {}
        for c in calls:
            if c.status != LLMCall.Status.OK:
                errors[c.error_kind or c.status] = errors.get(c.error_kind or c.status, 0) + 1
        ok = [c for c in calls if c.status == LLMCall.Status.OK]
        rate = f"{row['ok'] / row['units']:.0%}" if row["units"] else "-"
        lines.append(f"{arm:<8} {kind:<20} {row['ok']:>3}/{row['units']:<3} {rate:>5} {len(calls):>5} "
                     f"{', '.join(f'{k} {v}' for k, v in errors.items()) or '-':<24} "
                     f"{_seconds([c.ttft_ms for c in ok]):>15} {_seconds([c.latency_ms for c in ok]):>16} "
                     f"{_seconds(row['waits']):>15}")
    lines.append("")
    lines.append("target-tool calls per agentic conversation: " + (", ".join(
        f"{cid}: {len(t['calls'])} ({sum(1 for e in t['calls'] if e.get('refused'))} refused"
        f"{', an example move' if t['example'] else ''})" for cid, t in found["tools"].items()) or "none"))
    lines.append(f"unusable texts, counted as failures ({len(found['unusable'])}):")
    lines += [f"  - {u}" for u in found["unusable"]]
    lines.append(f"fallbacks ({len(found['fallbacks'])}):")
    for f in found["fallbacks"]:
        lines.append(f"  - {f['what']}: {f['reason'] or 'NO REASON RECORDED'}")
    lines.append("participants:")
    for o in outcomes:
        lines.append(f"  - {o.pid} {o.arm or '?'}: completed {o.completed}, sent {o.sent}"
                     + (f", error {o.error}" if o.error else "") + (f", refused {o.refused}" if o.refused else "")
                     + (f", unsettled turns {o.unsettled}" if o.unsettled else ""))
    return "\n".join(lines)


def missed_bars(found: dict, outcomes: list[Outcome], waiting: list[int]) -> list[str]:
    """The issue's bar, as a list of what it misses (empty: met)."""
    missed = []
    for o in outcomes:
        if not o.completed or o.unsettled or o.refused:
            missed.append(f"participant {o.pid} ({o.arm or '?'}) did not run to the end: {o.error or ''} "
                          f"unsettled {o.unsettled} refused {o.refused}")
    if waiting:
        missed.append(f"conversations {waiting}: the post-test prediction or note call never ended")
    for (arm, kind), row in found["rows"].items():
        if row["units"] == 0:
            missed.append(f"{arm} {kind}: no such call was made")
        elif row["ok"] / row["units"] < SUCCESS_MIN:
            missed.append(f"{arm} {kind}: {row['ok']}/{row['units']} succeeded (< {SUCCESS_MIN:.0%})")
    with_tools = [cid for cid, t in found["tools"].items() if t["calls"]]
    if not with_tools:
        missed.append(f"no target tool was called in any of the {len(found['tools'])} agentic conversations")
    for f in found["fallbacks"]:
        if not f["reason"]:
            missed.append(f"a fallback without a recorded reason: {f['what']}")
    return missed


# --------------------------------------------------------------------------- the test


def test_the_example_study_meets_the_bar_against_a_real_small_model(real_study, real_worker, live_server):
    version = real_study
    assert {a["kind"]: a["weight"] for a in version.spec["arms"]} == {"chat": 2, "agentic": 3}
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        strugglers: list[str] = []
        outcomes = list(pool.map(lambda i: _participant_run(live_server.url, version, i, strugglers), range(5)))
    agentic = list(Conversation.objects.filter(version=version, arm="agentic").values_list("pk", flat=True))
    waiting = _wrapups_settled(agentic)
    found = figures(version)
    report = table(found, outcomes)
    print("\n" + report)
    folder = Path(__file__).resolve().parent.parent / "artifacts" / "real_llm"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "figures.txt").write_text(report + "\n", encoding="utf-8")
    (folder / "worker.log").write_text(real_worker.log(), encoding="utf-8")
    assert sorted(o.arm for o in outcomes) == ["agentic"] * 3 + ["chat"] * 2, report
    missed = missed_bars(found, outcomes, waiting)
    assert not missed, "\n".join(["the bar is missed:", *missed, "", report])

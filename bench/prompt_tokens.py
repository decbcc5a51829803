#!/usr/bin/env python3
"""Prompt sizes of the example study's call kinds: estimated, counted by a real server, and whether each
fits a small context window with the reply's reserve.

The requests are the ones the worker sends, built by the production code on a conversation of a
realistic length (`--turns`, default 10 turns of history before the message being answered):

- chat reply                  the chat arm's reply to the participant's next question
- agentic opening             the agentic arm's first message (the learner model from the pre-test)
- agentic learner_update      the structured update after the participant's next message (a check answer)
- agentic reply               the reply to it, with the learner model and the next move
- agentic posttest_prediction the end of the step: P(correct) per post-test item
- agentic meeting_note        the end of the step: the note to the participant

Columns: `estimated` is explainers.providers.estimate_tokens of the messages (what the context budget
is checked with); `server` is the server's own count (usage.prompt_tokens of one real call with
max_tokens 1, tools and response format included) when a server answers at --url; `reserve` is the
request's max_tokens (the room kept for the answer); `fits` says whether server (else estimated) +
reserve <= --window. `trimmed` is what the prompt builder left out to fit the arm's budget.

The arms are the example's (or, with --arm-llm, with the `llm` of that file), with `llm.context_tokens`
set to --window (so the builder trims as it would for a 4,096-token server). Everything runs on a fresh database (`teachback_bench_prompts`, dropped and
created) and inside one transaction that is rolled back: nothing is queued, nothing is kept.

    .venv/bin/python bench/prompt_tokens.py [--url http://127.0.0.1:8090/v1] [--turns 10] [--window 4096]
                                            [--arm-llm tests/real_llm/llm.yaml]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import EXAMPLE, PG_ADMIN_URL, PYTHON, ROOT, say  # noqa: E402

DB_NAME = "teachback_bench_prompts"

# What a participant and a (good) explainer write, at the length the agentic arm's prompt asks for
# (under 120 words a message). Explainer turns carry the act and concept the policy recorded.
EXPLAINER = {
    "explain_all_three": (
        "explain", "all_three",
        "Let us start with how the model decides overall. It approves an applicant only when three things hold "
        "at the same time: the debt ratio is at most 0.39, the yearly income is above about 45 k$, and there are "
        "at most 2 late payments. If any one of them fails, the answer is a refusal, however good the rest looks. "
        "A very high income cannot make up for too many late payments, for example. Say when you are ready to "
        "go on, or ask me anything about this."),
    "check_all": ("check", "all_three", None),  # the check question's text is filled in from the item
    "correction_all_three": (
        "correction", "all_three",
        "Not quite: the model refuses this applicant. The income of 150 k$ is well above the threshold and the "
        "debt ratio of 0.20 is fine, but 3 late payments is one more than the model accepts. All three "
        "conditions must hold at once, so the late payments alone decide it. A strength on one condition never "
        "makes up for a failed one."),
    "explain_debt": (
        "explain", "debt",
        "The first thing the model looks at is the debt ratio: the monthly debt payments divided by the monthly "
        "income. Above 0.39 the model always refuses, whatever the income or payment history. So an applicant "
        "with a ratio of 0.45 is refused even with an excellent income. At 0.39 or below, the model goes on to "
        "check the other two conditions. Tell me when you are ready, or ask a question."),
    "example_debt": (
        "example", "debt",
        "I asked the model about an applicant earning 80 k$ with no late payments. With a debt ratio of 0.35 it "
        "approves. When I change only the debt ratio to 0.42, it refuses. Nothing else changed: the debt ratio "
        "crossed its limit of 0.39, and that alone turned the approval into a refusal."),
}
PARTICIPANT_LINES = ("ok", "b", "I see. So the income does not help if the late payments are too many?",
                     "ok, go on", "What happens right at a debt ratio of 0.39?")
CHAT_QUESTIONS = (
    "What matters most to the model?", "Does income matter?", "Why would an applicant be refused?",
    "Would someone with a debt ratio of 0.45 and a high income be approved?", "Does credit history count?",
    "What about years in employment?",
)
CHAT_ANSWER = (
    "The model is a small decision tree. It first checks the debt ratio: above 0.39 it refuses. Then it checks "
    "the yearly income, which must be above about 45 k$, and the number of late payments, which must be at most "
    "2. Only an applicant who passes all three checks is approved. Credit history and years in employment are "
    "in the data, but the model never uses them, so they do not change its decision. If you tell me an "
    "applicant's figures, I can say what the model decides and why.")


def _env(url: str) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production-" + "x" * 20,
        "SCRIPTED_LLM_URL": "", "LLM_BASE_URL": url, "LLM_API_KEY": "", "ANTHROPIC_BASE_URL": "", "ANTHROPIC_API_KEY": "",
        "DJANGO_DEBUG": "", "TEACHBACK_DEMO": "", "PYTHONPATH": str(ROOT),
    }


def _fresh_database(env: dict) -> None:
    import psycopg

    say(f"fresh database {DB_NAME}, migrated")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    result = subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _launch(window: int, arm_llm: Path | None):
    from ruamel.yaml import YAML

    from studies.services import study_launch, study_version_create
    from studies.spec import study_file_read

    folder = Path(tempfile.mkdtemp(prefix="teachback-prompts-")) / "study"
    shutil.copytree(EXAMPLE, folder)
    yaml = YAML(typ="rt")
    data = yaml.load((folder / "study.yaml").read_text(encoding="utf-8"))
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("chat", "agentic")]
    blocks = YAML(typ="safe").load(arm_llm.read_text(encoding="utf-8")) if arm_llm else {}
    for arm in data["arms"]:
        if arm["kind"] in blocks:
            arm["llm"] = blocks[arm["kind"]]
        arm["llm"]["context_tokens"] = window
    with (folder / "study.yaml").open("w", encoding="utf-8") as out:
        yaml.dump(data, out)
    version, _ = study_version_create(study_file=study_file_read(folder))
    shutil.rmtree(folder.parent, ignore_errors=True)
    return study_launch(slug=version.study.slug, number=version.number)


def _explainer(conversation, key: str, protocol, check_item: str = "", reply_to=None):
    from django.utils import timezone, translation

    from explainers.models import Turn
    from explainers.learner.moves import check_question_text

    act, concept, text = EXPLAINER[key]
    if text is None:
        with translation.override(conversation.language):
            text = "A quick check.\n\n" + check_question_text(protocol, check_item, conversation.language)
    return Turn.objects.create(conversation=conversation, author=Turn.Author.EXPLAINER, text=text, reply_to=reply_to,
                               status=Turn.Status.COMPLETE, act=act, concept=concept, check_item=check_item,
                               completed_at=timezone.now())


def _participant(conversation, text: str, status: str = "answered"):
    from explainers.models import Turn

    return Turn.objects.create(conversation=conversation, author=Turn.Author.PARTICIPANT, text=text, status=status)


def _agentic_history(conversation, protocol, turns: int):
    """Fill an agentic conversation (whose opening is pending) with `turns` turns; return the next message."""
    from explainers.models import Turn

    opening = conversation.turns.get(author=Turn.Author.EXPLAINER, reply_to__isnull=True)
    act, concept, text = EXPLAINER["explain_all_three"]
    Turn.objects.filter(pk=opening.pk).update(text=text, status=Turn.Status.COMPLETE, act=act, concept=concept)
    script = [("check_all", "prac_all"), ("correction_all_three", ""), ("explain_debt", ""), ("example_debt", ""),
              ("check_all", "prac_all2")]
    made, i = 1, 0
    while made < turns:  # participant, explainer, ...: ends on the explainer's check, which the next message answers
        asked = _participant(conversation, PARTICIPANT_LINES[i % len(PARTICIPANT_LINES)])
        key, item = script[i % len(script)] if made + 2 < turns else ("check_all", "prac_all2")
        _explainer(conversation, key, protocol, item, reply_to=asked)
        made += 2
        i += 1
    return _participant(conversation, "a", status=Turn.Status.PENDING)  # a wrong answer to the check


def _chat_history(conversation, turns: int):
    from explainers.models import Turn

    for n in range(0, turns, 2):
        asked = _participant(conversation, CHAT_QUESTIONS[(n // 2) % len(CHAT_QUESTIONS)])
        Turn.objects.create(conversation=conversation, author=Turn.Author.EXPLAINER, text=CHAT_ANSWER,
                            status=Turn.Status.COMPLETE, reply_to=asked)
    return _participant(conversation, "And what about an applicant with exactly 45 k$ of income?", status="pending")


def build_requests(version, turns: int) -> list[tuple[str, object, dict | None]]:
    """(call kind, LLMRequest, what was trimmed) for each call kind, on conversations of `turns` turns."""
    from django.utils import timezone

    from explainers import services
    from explainers.arms import arm_behaviour
    from explainers.arms import agentic
    from explainers.endpoints import llm_endpoint
    from explainers.models import LLMCall
    from studies.protocol import Protocol

    protocol = Protocol(version.spec)
    arms = protocol.arms
    pretest = [(i, 0.0) for i in version.spec["instruments"]["pre_test"]["forms"]["A"]]
    out = []

    def plan_of(turn, conversation, arm):
        # the worker's own builder: the arm's plan (explainers.arms)
        return arm_behaviour(arm).plan(turn=turn, conversation=conversation, arm=arm, endpoint=llm_endpoint(arm["llm"]))

    chat = services.conversation_start(version=version, arm_id="chat", language="en", pretest=pretest)
    pending = _chat_history(chat, turns)
    plan = plan_of(pending, chat, arms["chat"])
    out.append(("chat reply", plan.request, plan.trimmed))

    first = services.conversation_start(version=version, arm_id="agentic", language="en", pretest=pretest)
    opening = first.turns.get()
    plan = plan_of(opening, first, arms["agentic"])
    out.append(("agentic opening", plan.request, plan.trimmed))

    conversation = services.conversation_start(version=version, arm_id="agentic", language="en", pretest=pretest)
    pending = _agentic_history(conversation, protocol, turns)
    plan = plan_of(pending, conversation, arms["agentic"])
    assert plan.purpose == agentic.UPDATE, plan.purpose
    out.append(("agentic learner_update", plan.request, plan.trimmed))
    # the update came back valid (the current model, unchanged): the next call is the reply
    state = conversation.snapshots.order_by("-index").first().state
    LLMCall.objects.create(turn=pending, purpose=agentic.UPDATE, attempt=1, status=LLMCall.Status.OK,
                           provider="openai", model="bench", request={}, response={"parsed": state, "text": json.dumps(state)},
                           started_at=timezone.now(), version_sha256=version.sha256,
                           structured_output="json_schema")
    plan = plan_of(pending, conversation, arms["agentic"])
    assert plan.purpose == agentic.REPLY, plan.purpose
    out.append(("agentic reply", plan.request, plan.trimmed))

    post_items = [protocol.items[i] for i in version.spec["instruments"]["post_test"]["forms"]["A"]]
    services.conversation_finish(conversation=conversation, post_items=post_items)  # rule predictions
    endpoint = llm_endpoint(arms["agentic"]["llm"])
    plan = agentic.wrapup_plan(conversation=conversation, arm=arms["agentic"], endpoint=endpoint, made=[])
    out.append(("agentic posttest_prediction", plan.request, plan.trimmed))
    plan = agentic.wrapup_plan(conversation=conversation, arm=arms["agentic"], endpoint=endpoint,
                               made=[(agentic.PREDICTION, "")])
    out.append(("agentic meeting_note", plan.request, plan.trimmed))
    return out


def server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def server_count(request) -> tuple[int | None, str]:
    """The server's prompt tokens for this request (one real call, max_tokens 1), or (None, why not)."""
    from explainers.providers import ProviderError, llm_call

    names = {f.name for f in dataclasses.fields(request)}
    limits = {k: v for k, v in {"timeout_s": 300.0, "ttft_s": None, "idle_s": None}.items() if k in names}
    probe = dataclasses.replace(request, params={**request.params, "max_tokens": 1}, **limits)
    for attempt in (1, 2):
        try:
            result = llm_call(probe)
            break
        except ProviderError as error:
            # llama.cpp's server may close a kept-alive connection the client reuses ("Server disconnected
            # without sending a response"): once more on a fresh one
            if error.kind != "connection" or attempt == 2:
                return None, f"{error.kind} (HTTP {error.status})" if error.status else f"{error.kind}: {error.message}"
    return result.input_tokens, "" if result.input_tokens is not None else "no usage reported"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("REAL_LLM_URL", "http://127.0.0.1:8090/v1"))
    parser.add_argument("--turns", type=int, default=10, help="turns of history before the message answered")
    parser.add_argument("--window", type=int, default=4096, help="the server's context window per request")
    parser.add_argument("--arm-llm", type=Path, help="a YAML file whose `chat` and `agentic` keys replace those "
                        "arms' `llm` (e.g. tests/real_llm/llm.yaml: the real-model suite's settings)")
    args = parser.parse_args()

    env = _env(args.url)
    _fresh_database(env)
    os.environ.update(env)
    import django

    django.setup()
    from django.db import transaction

    from explainers.providers import estimate_tokens
    from explainers.prompts import REPLY_RESERVE_TOKENS

    version = _launch(args.window, args.arm_llm)
    with transaction.atomic():
        requests = build_requests(version, args.turns)
        transaction.set_rollback(True)  # nothing kept, and the queued tasks (on commit) never go out
    live = server_answers(args.url)
    say(f"{len(requests)} requests built on {args.turns}-turn conversations; server at {args.url}: "
        f"{'answers' if live else 'does not answer (estimates only)'}")
    print()
    print(f"{'call kind':<28} {'estimated':>9} {'server':>7} {'reserve':>7} {'total':>6} "
          f"{'fits ' + str(args.window):>9}  {'history':>7}  trimmed / note")
    for kind, request, trimmed in requests:
        estimated = estimate_tokens(request.messages)
        counted, why = server_count(request) if live else (None, "no server")
        reserve = int(request.params.get("max_tokens") or REPLY_RESERVE_TOKENS)
        total = (counted if counted is not None else estimated) + reserve
        history = sum(1 for m in request.messages if m.get("role") in ("user", "assistant"))
        note = json.dumps(trimmed, ensure_ascii=False) if trimmed else "-"
        if why:
            note += f"; server: {why}"
        print(f"{kind:<28} {estimated:>9} {counted if counted is not None else '-':>7} {reserve:>7} {total:>6} "
              f"{'yes' if total <= args.window else 'NO':>9}  {history:>7}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Monitor and participant-list page time at 1 000 and 10 000 participants (200 000 turns at 10 000).

    .venv/bin/python bench/monitor.py [--requests 30] [--sizes 1000,10000] [--turns 200000] [--keep]

Builds its own PostgreSQL database (`teachback_bench_monitor`, dropped and created; dropped again at the
end unless --keep), migrates it, loads and launches the example study, and fills it with `study_populate`
(bulk_create: participants in every step and status, page visits, conversations with turns, LLM calls and
learner-model snapshots). It then requests the researcher's monitor page, its live fragment and the
participant list ~30 times each through Django's test client in this process (the whole request: middleware,
session, gatekeeper, queries, template; no network), and prints p50/p95 and the queries per request.
The monitor is measured both ways console/monitoring.py serves it: with its numbers computed in the request
(the cache emptied before each one: what every refresh by a worker costs) and from the cache (what a poll
costs while a worker keeps the numbers fresh). The cache is Redis db 11 (BENCH_REDIS_URL), flushed.

`study_populate` is also what tests/console/test_monitor_queries.py uses to grow a study.
"""
from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "teachback_bench_monitor"
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
BATCH = 5000
PAGES = ("pre_test", "explanation", "post_test", "debrief")


def study_populate(version, n: int, *, turns: int = 0, seed: int = 0, now=None) -> dict:
    """Add `n` participants to a launched study version with bulk inserts; return what was made.

    Participants spread over the version's arms, steps and statuses (about 60 % completed); each has
    page visits for the steps behind it. `turns` chat turns in all are spread over the participants of
    conversational arms (tutor, chat, agentic), alternating participant and explainer; every participant
    turn of an LLM arm gets an LLM call (some failed, some retried), and every participant turn of an arm
    with a learner model gets a snapshot.
    """
    from django.utils import timezone

    from participants.pseudonyms import pseudonym
    from explainers.models import Conversation, LearnerModelSnapshot, LLMCall, Turn
    from participants.models import STEP_ORDER, PageVisit, Participant, Response, Step

    rng = random.Random(seed)
    now = now or timezone.now()
    arms = version.spec["arms"]
    concepts = [c["id"] for c in version.spec.get("concepts") or []] or ["c"]
    S = Participant.Status
    tag = secrets.token_hex(4)
    participants = []
    for i in range(n):
        arm = arms[i % len(arms)]
        roll = rng.random()
        if roll < 0.6:
            status, step = S.COMPLETED, Step.DONE
        elif roll < 0.65:
            status, step = S.DECLINED, Step.CONSENT
        elif roll < 0.72:
            status, step = S.WITHDRAWN, rng.choice(STEP_ORDER[1:5])
        else:
            status, step = S.ACTIVE, rng.choice(STEP_ORDER[:6])
        allocated = STEP_ORDER.index(step) > STEP_ORDER.index(Step.PRE_TEST) or status == S.COMPLETED
        started = now - timedelta(minutes=rng.uniform(1, 600))
        participants.append(Participant(
            token=f"bench-{tag}-{i}-{secrets.token_hex(8)}", study_id=version.study_id, version=version,
            version_sha256=version.sha256, pid_hash=None, language="en", is_simulated=rng.random() < 0.1,
            arm=arm["id"] if allocated else "", form_order=rng.choice(["AB", "BA"]),
            allocation_index=i if allocated else None, allocated_at=started if allocated else None,
            step=step, status=status, consented_at=None if status == S.DECLINED else started,
            completed_at=started + timedelta(minutes=20) if status == S.COMPLETED else None,
        ))
    made = Participant.objects.bulk_create(participants, batch_size=BATCH)
    # auto_now_add fields take "now" on insert: spread the times so idle/dropout numbers mean something
    for p in made:
        p.created_at = p.allocated_at or now - timedelta(minutes=rng.uniform(1, 600))
        p.last_seen_at = p.created_at + timedelta(minutes=rng.uniform(0, 40))
    fields = ["created_at", "last_seen_at"]
    if any(f.name == "pseudonym" for f in Participant._meta.get_fields()):
        for p in made:
            p.pseudonym = pseudonym(p.pk)
        fields.append("pseudonym")
    Participant.objects.bulk_update(made, fields, batch_size=BATCH)

    visits, responses = [], []
    for p in made:
        if p.status == S.DECLINED:
            continue
        reached = STEP_ORDER.index(p.step) if p.status != S.COMPLETED else len(STEP_ORDER)
        t = p.created_at
        for page_step in PAGES:
            index = STEP_ORDER.index(page_step)
            if index > reached:
                break
            done = index < reached
            pages = [f"{page_step}:i{k}" for k in range(5)] if page_step in ("pre_test", "post_test") else [page_step]
            for page in pages:
                ms = rng.randint(4_000, 90_000) if page_step != "explanation" else rng.randint(60_000, 900_000)
                visits.append(PageVisit(
                    participant=p, page=page, first_shown_at=t, last_shown_at=t, shown_count=rng.choice([1, 1, 1, 2]),
                    submitted_at=t + timedelta(milliseconds=ms) if done else None, server_ms=ms if done else None,
                    client={"paste_count": rng.choice([0, 0, 0, 1]), "hidden_ms": rng.choice([0, 0, 90_000])},
                    version_sha256=p.version_sha256,
                ))
                if done and page_step in ("pre_test", "post_test"):
                    score = float(rng.random() < 0.6)
                    responses.append(Response(
                        participant=p, phase=page_step, item_id=page.split(":")[1], concept=rng.choice(concepts),
                        value="a", score=score, correct=bool(score), time_ms=ms, version_sha256=p.version_sha256,
                    ))
                t += timedelta(milliseconds=ms)
    PageVisit.objects.bulk_create(visits, batch_size=BATCH)
    Response.objects.bulk_create(responses, batch_size=BATCH)

    arm_kind = {a["id"]: a["kind"] for a in arms}
    talkers = [p for p in made if arm_kind.get(p.arm) in ("tutor", "chat", "agentic")
               and STEP_ORDER.index(p.step) >= STEP_ORDER.index(Step.EXPLANATION) and p.status != S.DECLINED]
    conversations = Conversation.objects.bulk_create(
        [Conversation(version=version, version_sha256=version.sha256, arm=p.arm, language="en") for p in talkers],
        batch_size=BATCH,
    )
    for p, c in zip(talkers, conversations):
        p.conversation = c
    Participant.objects.bulk_update(talkers, ["conversation"], batch_size=BATCH)
    per = [turns // len(conversations) + (1 if k < turns % len(conversations) else 0)
           for k in range(len(conversations))] if conversations and turns else [0] * len(conversations)

    snapshots = [
        LearnerModelSnapshot(conversation=c, index=0, turn=None, source="pretest", schema_version=1,
                             state=_state(concepts, rng))
        for c in conversations if arm_kind[c.arm] in ("tutor", "agentic")
    ]
    # participant turns first, then the explainer's replies to them (reply_to is unique and required)
    asked = []
    for c, count in zip(conversations, per):
        for k in range((count + 1) // 2):
            failed = rng.random() < 0.02
            asked.append(Turn(conversation=c, author=Turn.Author.PARTICIPANT, text=f"question {k}",
                              status=Turn.Status.FAILED if failed else Turn.Status.ANSWERED))
    asked = Turn.objects.bulk_create(asked, batch_size=BATCH)
    replies, left = [], dict(zip((c.pk for c in conversations), (count // 2 for count in per)))
    for turn in asked:
        if left[turn.conversation_id] and turn.status != Turn.Status.FAILED:
            left[turn.conversation_id] -= 1
            replies.append(Turn(conversation=turn.conversation, author=Turn.Author.EXPLAINER, reply_to=turn,
                                text="an answer", status=Turn.Status.COMPLETE,
                                act=rng.choice(["explain", "check", "example"]), concept=rng.choice(concepts)))
    Turn.objects.bulk_create(replies, batch_size=BATCH)
    calls, index = [], {}
    for turn in asked:  # LLM calls and learner-model snapshots hang on the participant's turn they answer
        kind = arm_kind[turn.conversation.arm]
        if kind in ("chat", "agentic"):
            attempts = 2 if rng.random() < 0.05 else 1
            for attempt in range(1, attempts + 1):
                ok = attempt == attempts and turn.status != Turn.Status.FAILED
                calls.append(LLMCall(
                    turn=turn, purpose="reply", attempt=attempt, status=LLMCall.Status.OK if ok else LLMCall.Status.ERROR,
                    provider="openai", model="gpt-4o-mini", request={"messages": []}, response=None,
                    error_kind="" if ok else "timeout", started_at=now, ttft_ms=rng.randint(200, 2500) if ok else None,
                    latency_ms=rng.randint(800, 6000), input_tokens=rng.randint(800, 2500) if ok else None,
                    output_tokens=rng.randint(50, 400) if ok else None,
                    cost_usd=Decimal(rng.randint(100, 900)) / Decimal(1_000_000) if ok else None,
                    version_sha256=version.sha256,
                ))
        if kind in ("tutor", "agentic"):
            index[turn.conversation_id] = index.get(turn.conversation_id, 0) + 1
            snapshots.append(LearnerModelSnapshot(
                conversation_id=turn.conversation_id, index=index[turn.conversation_id], turn=turn, source="rules",
                schema_version=1, state=_state(concepts, rng),
            ))
    LLMCall.objects.bulk_create(calls, batch_size=BATCH)
    LearnerModelSnapshot.objects.bulk_create(snapshots, batch_size=BATCH)
    return {"participants": len(made), "turns": len(asked) + len(replies), "llm_calls": len(calls), "snapshots": len(snapshots),
            "page_visits": len(visits)}


def _state(concepts: list[str], rng: random.Random) -> dict:
    return {
        "schema_version": 1,
        "concepts": {c: {"mastery": round(rng.random(), 3), "evidence": []} for c in concepts},
        "misconceptions": rng.choice([[], ["income alone decides"]]),
        "background": "", "next_goal": {"concept": rng.choice(concepts), "act": "explain"}, "why": "bench",
    }


# --- the benchmark ---------------------------------------------------------------------------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def _fresh_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def _measure(client, url: str, requests: int, before=None) -> tuple[list[float], int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):  # warm up: templates compiled, plans cached
        if before:
            before()
        assert client.get(url).status_code == 200
    times, queries = [], set()
    for _ in range(requests):
        if before:
            before()
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        queries.add(len(captured.captured_queries))
    assert len(queries) == 1, f"{url}: the query count varied between requests: {queries}"
    return times, queries.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--turns", type=int, default=200_000, help="chat turns at the largest size")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    db_url = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": db_url,
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "bench-monitor-secret-" + "x" * 30,
        "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost", "DJANGO_DEBUG": "", "TEACHBACK_DEMO": "",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),  # the cache; flushed
        "SCRIPTED_LLM_URL": "http://127.0.0.1:9/",  # chat arms count as runnable; nothing is called
    })
    sys.path.insert(0, str(ROOT))
    print(f"fresh database {DB_NAME}; migrating", flush=True)
    _fresh_database(DB_NAME)
    _flush_redis(os.environ["REDIS_URL"])
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    try:
        _run(sizes, args)
    finally:
        from django.db import connections

        connections.close_all()
        _flush_redis(os.environ["REDIS_URL"])  # the monitor's numbers and the refreshes no worker took
        if not args.keep:
            _drop_database(DB_NAME)


def _run(sizes: list[int], args) -> None:
    import warnings

    import django

    warnings.filterwarnings("ignore", message="No directory at")  # WhiteNoise: static files are not collected here

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import override_settings

    from studies.models import Membership
    from studies.services import study_launch, study_version_create
    from studies.spec import study_file_read

    version, _ = study_version_create(study_file=study_file_read(ROOT / "studies" / "examples" / "loan-approval"))
    version = study_launch(slug=version.study.slug, number=version.number)
    user = get_user_model().objects.create_user("bench-owner", password="x")
    Membership.objects.create(study=version.study, user=user, role=Membership.Role.OWNER)
    client = Client()
    client.force_login(user)
    slug = version.study.slug
    from django.core.cache import cache

    from console.monitoring import cache_key

    def forget():
        cache.delete(cache_key(version.study))

    # the monitor both ways it is served (console/monitoring.py): computed in the request (what a worker's
    # refresh costs, and a request when no worker refreshed the numbers) and from the cache (every poll)
    pages = {
        "monitor page, numbers computed": (f"/console/{slug}/monitor/", forget),
        "monitor fragment, numbers computed": (f"/console/{slug}/monitor/live/", forget),
        "monitor fragment, numbers from the cache": (f"/console/{slug}/monitor/live/", None),
        "participant list": (f"/console/{slug}/participants/", None),
        "participant list, page 20, arm filter": (f"/console/{slug}/participants/?arm=chat&page=20", None),
    }
    storages = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    rows = []
    have = 0
    largest = max(sizes)
    with override_settings(STORAGES=storages):
        for size in sizes:
            started = time.monotonic()
            turns = round(args.turns * size / largest)
            made = {"participants": 0, "turns": 0}
            while have < size:
                step = min(2000, size - have)
                out = study_populate(version, step, turns=round(turns * step / size), seed=have)
                have += step
                for k in made:
                    made[k] += out[k]
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
                cursor.execute("SELECT count(*) FROM explainers_turn")
                total_turns = cursor.fetchone()[0]
                cursor.execute("SELECT count(*) FROM explainers_llmcall")
                total_calls = cursor.fetchone()[0]
            print(f"{size} participants, {total_turns} turns, {total_calls} LLM calls "
                  f"(built in {time.monotonic() - started:.0f} s)", flush=True)
            for name, (url, before) in pages.items():
                times, queries = _measure(client, url, args.requests, before)
                rows.append((size, total_turns, name, _percentile(times, 50), _percentile(times, 95), queries))
                print(f"  {name:<42} p50 {rows[-1][3]:7.1f} ms  p95 {rows[-1][4]:7.1f} ms  {queries} queries", flush=True)
    print()
    print("| participants | turns | page | p50 (ms) | p95 (ms) | queries |")
    print("|---:|---:|---|---:|---:|---:|")
    for size, total_turns, name, p50, p95, queries in rows:
        print(f"| {size:,} | {total_turns:,} | {name} | {p50:.1f} | {p95:.1f} | {queries} |")


if __name__ == "__main__":
    main()

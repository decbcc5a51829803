#!/usr/bin/env python3
"""P6: export time and peak memory at 1k, 5k, 10k participants (goal at 10k: <= 30 s, <= 500 MB).

Builds a dedicated database (`teachback_bench_p6`, dropped, created, migrated), launches the example
study (chat arm), and adds participants with `bulk_create` up to each size: per participant 13
responses, 16 page visits, `--turns` chat turns (half the participant's, half the explainer's
replies) and one LLM call per reply with a realistic request (system prompt, material excerpt and
the last messages) and response. Each export (`manage.py study_export`) runs in a child of a small
wrapper process that prints `getrusage(RUSAGE_CHILDREN).ru_maxrss`: the export's own peak RSS.

    .venv/bin/python bench/p6_export.py [--sizes 1000,5000,10000] [--turns 50] [--formats csv,parquet,jsonl]
"""
import argparse
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import EXAMPLE, PG_ADMIN_URL, PYTHON, ROOT, say  # noqa: E402

DB = "teachback_bench_p6"
DB_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
ENV = {**os.environ, "DATABASE_URL": DB_URL, "DJANGO_SECRET_KEY": "bench-p6-" + "x" * 40,
       "REDIS_URL": "redis://127.0.0.1:6379/11", "DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_DEBUG": ""}
BATCH = 250  # participants per bulk_create round


def fresh_database():
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=ENV, check=True)


def launch():
    from ruamel.yaml import YAML

    from studies.services import study_launch, study_version_create
    from studies.spec import study_file_read

    folder = Path(tempfile.mkdtemp(prefix="p6-")) / "study"
    shutil.copytree(EXAMPLE, folder)
    yaml = YAML(typ="rt")
    data = yaml.load((folder / "study.yaml").read_text(encoding="utf-8"))
    data["arms"] = [a for a in data["arms"] if a["kind"] == "chat"]
    with (folder / "study.yaml").open("w", encoding="utf-8") as out:
        yaml.dump(data, out)
    version, _ = study_version_create(study_file=study_file_read(folder))
    return study_launch(slug=version.study.slug, number=version.number)


def add_participants(version, start: int, stop: int, turns: int, rng: random.Random):
    """Add participants start..stop-1 with their responses, page visits, turns and LLM calls."""
    from django.db import transaction
    from django.utils import timezone

    from explainers.models import Conversation, LLMCall, Turn
    from participants.models import PageVisit, Participant, Response
    from studies.protocol import Protocol

    protocol = Protocol(version.spec)
    system = version.spec["arms"][0]["system_prompt"]["en"]
    sha = version.sha256
    for lo in range(start, stop, BATCH):
        hi = min(stop, lo + BATCH)
        t0 = timezone.now() - timedelta(days=1)
        with transaction.atomic():
            conversations = Conversation.objects.bulk_create([
                Conversation(version=version, version_sha256=sha, arm="chat", scripted=True) for _ in range(lo, hi)
            ])
            people = Participant.objects.bulk_create([
                Participant(
                    token=secrets.token_urlsafe(32), study=version.study, version=version, version_sha256=sha,
                    pid_hash=secrets.token_hex(32), session_hash=secrets.token_hex(32), arm="chat",
                    form_order="AB" if i % 2 else "BA", stratum="all", allocation_index=i, step="done",
                    status="completed", is_simulated=i % 10 == 0, conversation=c, consent_version="v1",
                    consented_at=t0, allocated_at=t0, completed_at=t0 + timedelta(minutes=20),
                )
                for i, c in zip(range(lo, hi), conversations)
            ])
            responses, visits, asks = [], [], []
            for p in people:
                for phase in ("pre_test", "post_test", "questionnaire"):
                    for item_id in protocol.phase_item_ids(phase, p.form_order):
                        item = protocol.items[item_id]
                        value = ["a", "c"] if item["kind"] == "multi_choice" else "yes"
                        responses.append(Response(
                            participant=p, phase=phase, item_id=item_id, form=protocol.phase_form(phase, p.form_order),
                            concept=item.get("concept") or "", value=value, score=rng.random(), correct=rng.random() < .6,
                            confidence=rng.randint(40, 100) if item.get("confidence") else None,
                            time_ms=rng.randint(2000, 40000), version_sha256=sha,
                        ))
                        visits.append(PageVisit(
                            participant=p, page=f"{phase}:{item_id}", first_shown_at=t0, last_shown_at=t0,
                            shown_count=1 + (rng.random() < .1), submitted_at=t0, server_ms=rng.randint(2000, 40000),
                            client={"visibility_changes": rng.randint(0, 3), "hidden_ms": rng.randint(0, 5000),
                                    "paste_count": 0, "blur_count": rng.randint(0, 2),
                                    "first_input_ms": rng.randint(500, 9000)},
                            version_sha256=sha,
                        ))
                for n in range(turns // 2):
                    asks.append(Turn(conversation_id=p.conversation_id, author="participant", status="answered",
                                     text=f"Question {n}: why was applicant {rng.randint(1, 999)} refused?"))
            Response.objects.bulk_create(responses, batch_size=5000)
            PageVisit.objects.bulk_create(visits, batch_size=5000)
            asks = Turn.objects.bulk_create(asks, batch_size=5000)
            reply_text = "The model first checks the debt ratio; above 0.39 it refuses. " * 4
            Turn.objects.bulk_create([
                Turn(conversation_id=a.conversation_id, author="explainer", status="complete", reply_to=a,
                     text=reply_text, scripted=True, first_token_at=t0, completed_at=t0)
                for a in asks
            ], batch_size=5000)
            LLMCall.objects.bulk_create([
                LLMCall(
                    turn=a, purpose="reply", attempt=1, status="ok", provider="openai", model="gpt-4o-mini",
                    model_reported="gpt-4o-mini-2024-07-18", scripted=True,
                    request={"model": "gpt-4o-mini", "params": {"temperature": 0.3, "max_tokens": 500},
                             "messages": [{"role": "system", "content": system},
                                          {"role": "user", "content": a.text},
                                          {"role": "assistant", "content": reply_text}, {"role": "user", "content": a.text}]},
                    response={"id": "chatcmpl-" + secrets.token_hex(12), "text": reply_text, "finish_reason": "stop"},
                    started_at=t0, ttft_ms=rng.randint(200, 900), latency_ms=rng.randint(900, 4000),
                    input_tokens=rng.randint(300, 3000), output_tokens=rng.randint(50, 400),
                    cost_usd=Decimal("0.000321"), version_sha256=sha,
                )
                for a in asks
            ], batch_size=5000)


def measure(slug: str, fmt: str, out: Path) -> tuple[float, float]:
    """Run the export in a child; return (wall seconds, the child's peak RSS in MB)."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [PYTHON, "-c", wrapper, PYTHON, "manage.py", "study_export", slug, "--format", fmt, "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    wall, rss_kb = result.stdout.split()
    return float(wall), int(rss_kb) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--formats", default="csv,parquet,jsonl")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")

    say(f"fresh database {DB}")
    fresh_database()
    os.environ.update(ENV)
    import django

    django.setup()
    from explainers.models import LLMCall, Turn

    version = launch()
    slug = version.study.slug
    rng = random.Random(6)
    results, have = [], 0
    out_root = Path(tempfile.mkdtemp(prefix="p6-out-"))
    try:
        for size in sizes:
            t = time.monotonic()
            add_participants(version, have, size, args.turns, rng)
            have = size
            say(f"{size} participants ({Turn.objects.count()} turns, {LLMCall.objects.count()} LLM calls) "
                f"generated in {time.monotonic() - t:.0f} s")
            for fmt in formats:
                out = out_root / f"{size}-{fmt}"
                wall, rss = measure(slug, fmt, out)
                mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
                results.append((size, fmt, wall, rss, mb))
                say(f"  {fmt:<8} {wall:6.1f} s  peak RSS {rss:6.0f} MB  output {mb:7.1f} MB")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    print()
    print("| participants | turns | format | wall (s) | peak RSS (MB) | output (MB) |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for size, fmt, wall, rss, mb in results:
        print(f"| {size:,} | {size * (args.turns // 2) * 2:,} | {fmt} | {wall:.1f} | {rss:.0f} | {mb:.1f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""P4: provider calls in flight in ONE Celery worker process, and its reply throughput.

Goal: >= 500 calls in flight, throughput >= 90 % of concurrency / latency.

Creates `--turns` pending participant turns in bulk (one conversation each), enqueues
`reply_generate_task.delay(turn_id)` for all of them, and lets one worker
(`--pool threads --concurrency C`) answer them from the fake provider (latency_s 2, ttft_s 0.5,
streamed word by word, the fake's default ~50-word reply). Every 0.5 s it samples the fake's
in-flight count, the answered turns in the database and the number of PostgreSQL connections to
the bench database (`pg_stat_activity`, this script's own sampling connection excluded).

Throughput (steady state) = answered turns per second between 15 % and 85 % of all turns answered.

    .venv/bin/python bench/p4_worker_in_flight.py [--turns 2000] [--concurrency 600] [--db-slots 20]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CpuMeter, Stack, say  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=600)
    parser.add_argument("--db-slots", type=int, default=None, help="WORKER_DB_SLOTS (default: the settings' 20)")
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--ttft", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds")
    parser.add_argument("--profile", type=float, default=0.0,
                        help="run py-spy (PYSPY env or /tmp/pyspy/bin/py-spy) on the worker for this many seconds")
    args = parser.parse_args()

    with Stack(web=False, worker_concurrency=args.concurrency, worker_db_slots=args.db_slots,
               fake_behaviour={"ttft_s": args.ttft, "latency_s": args.latency}) as stack:
        import psycopg
        from django.db import connections
        from django.utils import timezone

        from explainers.models import Conversation, Turn
        from explainers.tasks import reply_generate_task

        version = stack.version
        arm = next(a["id"] for a in version.spec["arms"] if a["kind"] == "chat")
        say(f"creating {args.turns} conversations and pending turns in bulk")
        conversations = Conversation.objects.bulk_create([
            Conversation(version=version, version_sha256=version.sha256, arm=arm, language="en", scripted=True)
            for _ in range(args.turns)
        ], batch_size=1000)
        now = timezone.now()
        turns = Turn.objects.bulk_create([
            Turn(conversation=c, author=Turn.Author.PARTICIPANT, text=f"Why was applicant {i} refused?",
                 status=Turn.Status.PENDING, enqueued_at=now)
            for i, c in enumerate(conversations)
        ], batch_size=1000)
        turn_ids = [t.id for t in turns]
        connections.close_all()

        sampler = psycopg.connect(stack.db_url.replace("postgres://", "postgresql://"), autocommit=True)
        answered_sql = "SELECT count(*) FROM explainers_turn WHERE status = 'answered' AND author = 'participant'"
        conns_sql = ("SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity"
                     " WHERE datname = %s AND pid <> pg_backend_pid()")

        meter = CpuMeter(stack.pids()).start()
        t0 = time.monotonic()
        for turn_id in turn_ids:
            reply_generate_task.delay(turn_id)
        t_enqueued = time.monotonic() - t0
        say(f"enqueued {len(turn_ids)} tasks in {t_enqueued:.1f} s; watching")

        profiler = None
        samples = []  # (t, in_flight, answered, pg_total, pg_active)
        while time.monotonic() - t0 < args.timeout:
            stats = stack.fake.stats()
            answered = sampler.execute(answered_sql).fetchone()[0]
            pg_total, pg_active = sampler.execute(conns_sql, (stack.db_name,)).fetchone()
            samples.append((time.monotonic() - t0, stats["in_flight"], answered, pg_total, pg_active))
            if args.profile and profiler is None and answered >= 0.15 * args.turns:
                import os
                import subprocess

                pyspy = os.environ.get("PYSPY", "/tmp/pyspy/bin/py-spy")
                out = Path("/tmp") / "p4-worker-profile"
                profiler = subprocess.Popen(
                    f"{pyspy} record -p {stack.children['worker'].pid} -d {int(args.profile)} -r 50 -f raw -o {out}.raw"
                    f" --nonblocking > {out}.log 2>&1", shell=True)
                say(f"py-spy recording the worker for {args.profile} s -> {out}.raw")
            if answered >= args.turns:
                break
            time.sleep(0.5)
        usage = meter.stop()
        if profiler is not None:
            profiler.wait(timeout=args.profile + 30)
        stats = stack.fake.stats()
        status_counts = dict(Turn.objects.filter(id__in=turn_ids).values_list("status").annotate(
            n=__import__("django.db.models", fromlist=["Count"]).Count("id")))
        connections.close_all()
        sampler.close()

        total = args.turns
        lo = next((s for s in samples if s[2] >= 0.15 * total), None)
        hi = next((s for s in samples if s[2] >= 0.85 * total), None)
        steady = (hi[2] - lo[2]) / (hi[0] - lo[0]) if lo and hi and hi[0] > lo[0] else float("nan")
        window = [s for s in samples if lo and hi and lo[0] <= s[0] <= hi[0]]
        mean_in_flight = sum(s[1] for s in window) / len(window) if window else float("nan")
        last = samples[-1]
        overall = last[2] / last[0] if last[0] else float("nan")
        ideal = args.concurrency / args.latency
        print()
        print("=" * 100)
        print(f"P4  one worker: --pool threads --concurrency {args.concurrency}, WORKER_DB_SLOTS="
              f"{args.db_slots or 20}; {total} turns; fake latency {args.latency} s, ttft {args.ttft} s")
        print(f"  answered {last[2]} of {total} in {last[0]:.1f} s (enqueueing took {t_enqueued:.1f} s); turn statuses {status_counts}")
        print(f"  max in flight at the provider (fake max_in_flight): {stats['max_in_flight']}; "
              f"mean in flight in the steady window: {mean_in_flight:.0f}")
        print(f"  throughput steady (15 %..85 % answered): {steady:.1f} replies/s; overall {overall:.1f} replies/s")
        print(f"  ideal concurrency / latency = {args.concurrency} / {args.latency} = {ideal:.0f}/s;"
              f" ratio = {steady / ideal * 100:.0f} %  ->  goal >= 90 %: {'MET' if steady >= 0.9 * ideal else 'MISSED'};"
              f" in-flight goal >= 500: {'MET' if stats['max_in_flight'] >= 500 else 'MISSED'}")
        print(f"  PostgreSQL connections to the bench DB: max {max(s[3] for s in samples)}"
              f" (max active {max(s[4] for s in samples)}), of max_connections 100")
        print("  timeline (t s: in flight / answered / PG conns):  " + "  ".join(
            f"{s[0]:.0f}:{s[1]}/{s[2]}/{s[3]}" for s in samples[:: max(1, len(samples) // 16)]))
        print(CpuMeter.report(usage))
        print("=" * 100)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""P3: platform overhead per chat turn at N concurrent chats (goal: p95 <= 30 ms).

overhead = (POST /chat/send/ -> first `delta` event read by the SSE client)
           - the provider's own time to first token (LLMCall.ttft_ms of that attempt, measured in the
             worker from the start of the HTTP request to the first text delta).

So it covers: the send view (session, row lock, turn insert, commit, enqueue), the broker, the
worker picking the task up, the worker's reads and LLMCall insert before the call, the delta's
publish on Redis, and the SSE relay to the client. The fake provider answers with ttft_s=0.5 and
latency_s=2 (by default).

Each of N simulated participants (HTTP, session cookie set directly) loops: send a message, follow
the reply's event stream to `done`, think for a random 0.5-1.5 s, send again; `--turns` times.

    .venv/bin/python bench/p3_turn_overhead.py [--chats 200] [--turns 5] [--concurrency 300]
"""
import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HTTP, CpuMeter, PgSampler, Stack, chat_turn, percentile, say  # noqa: E402


async def participant_loop(port, cookie, extra, turns, rng, results, errors, start_at):
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    post, sse = HTTP(port), HTTP(port)
    try:
        for n in range(turns):
            try:
                r = await chat_turn(post, sse, cookie, extra, f"Why was applicant {rng.randint(1, 999)} refused? ({n})")
                r["n"] = n
                results.append(r)
            except Exception as error:  # counted and reported, never hidden
                errors.append(repr(error)[:300])
                post.close(), sse.close()
            await asyncio.sleep(rng.uniform(0.5, 1.5))
    finally:
        post.close(), sse.close()


async def drive(port, sessions, turns, ramp_s):
    results, errors = [], []
    rng = random.Random(3)
    t0 = time.monotonic() + 0.2
    await asyncio.gather(*[
        participant_loop(port, cookie, extra, turns, random.Random(i), results, errors, t0 + rng.uniform(0, ramp_s))
        for i, (cookie, extra) in enumerate(sessions)
    ])
    return results, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5, help="turns per participant")
    parser.add_argument("--concurrency", type=int, default=300, help="Celery worker threads")
    parser.add_argument("--ttft", type=float, default=0.5)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--ramp", type=float, default=2.0, help="participants start spread over this many seconds")
    args = parser.parse_args()

    with Stack(worker_concurrency=args.concurrency, fake_behaviour={"ttft_s": args.ttft, "latency_s": args.latency}) as stack:
        say(f"creating {args.chats} participants in the chat step")
        people = stack.participants(args.chats, prefix="p3")
        sessions = [stack.cookies(p) for p in people]
        from django.db import connections

        connections.close_all()
        say(f"driving {args.chats} concurrent chats x {args.turns} turns (fake ttft {args.ttft} s, latency {args.latency} s)")
        meter = CpuMeter(stack.pids()).start()
        pg = PgSampler(stack.db_url, stack.db_name).start()
        t_start = time.monotonic()
        results, errors = asyncio.run(drive(stack.web_port, sessions, args.turns, args.ramp))
        wall = time.monotonic() - t_start
        usage = meter.stop()
        pg_line = pg.stop()

        from explainers.models import LLMCall

        ttft = {}
        for turn_id, ttft_ms, attempt in LLMCall.objects.filter(
            turn_id__in=[r["turn"] for r in results], purpose="reply"
        ).values_list("turn_id", "ttft_ms", "attempt"):
            if attempt == 1:
                ttft[turn_id] = ttft_ms
        stats = stack.fake.stats()

        ok = [r for r in results if r["final"] == "done" and r["t_first"] is not None and ttft.get(r["turn"]) is not None]
        first_ms = [(r["t_first"] - r["t_send"]) * 1000 for r in ok]
        overhead = [(r["t_first"] - r["t_send"]) * 1000 - ttft[r["turn"]] for r in ok]
        nominal = [(r["t_first"] - r["t_send"]) * 1000 - args.ttft * 1000 for r in ok]
        send_ms = [(r["t_accepted"] - r["t_send"]) * 1000 for r in ok]
        provider = [ttft[r["turn"]] for r in ok]
        steady = [(r["t_first"] - r["t_send"]) * 1000 - ttft[r["turn"]] for r in ok if r["n"] > 0]

        def line(name, values):
            return (f"  {name:<44} n={len(values):4d}  p50={percentile(values, 50):7.1f}  p95={percentile(values, 95):7.1f}"
                    f"  p99={percentile(values, 99):7.1f}  max={max(values) if values else float('nan'):7.1f} ms")

        print()
        print("=" * 100)
        print(f"P3  platform overhead per turn, {args.chats} concurrent chats, {args.turns} turns each "
              f"(fake ttft {args.ttft} s, latency {args.latency} s; worker --pool threads --concurrency {args.concurrency}; 1 uvicorn)")
        print(f"  turns answered: {len(ok)} of {args.chats * args.turns}; errors: {len(errors)}; wall {wall:.1f} s;"
              f" fake max in flight {stats['max_in_flight']}")
        print(line("send -> first delta at the SSE client", first_ms))
        print(line("provider ttft (LLMCall.ttft_ms)", provider))
        print(line("POST /chat/send/ round trip", send_ms))
        print(line("OVERHEAD = first delta - provider ttft", overhead))
        print(line("  same, first turn of each chat excluded", steady))
        print(line("  same, with the nominal ttft instead", nominal))
        p95 = percentile(overhead, 95)
        print(f"  P3 p50 = {percentile(overhead, 50):.1f} ms, p95 = {p95:.1f} ms  ->  goal p95 <= 30 ms: "
              f"{'MET' if p95 <= 30 else 'MISSED'}")
        print(f"  {pg_line}")
        print(CpuMeter.report(usage))
        for error in sorted(set(errors))[:5]:
            print(f"  error sample: {error}")
        print("=" * 100)


if __name__ == "__main__":
    main()

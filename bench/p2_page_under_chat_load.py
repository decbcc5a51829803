#!/usr/bin/env python3
"""P2: p95 of an unrelated participant page, idle and while N chats stream (goal: loaded <= 1.2 x idle).

The page: GET /s/<slug>/pre-test/ (a pre-test item page, full Django view: session, participant,
page-visit write, template) for participants who are not chatting, requested by sequential probes
(`--probers` loops, one request at a time each, `--gap` seconds apart), round robin over `--readers`
participants.

Phase 1 (idle): probes only. Phase 2 (loaded): N participants (another process, so the probes'
event loop is not the one busy with N event streams) chat continuously against the fake provider
(latency 2 s, ttft 0.5 s): send, follow the reply's SSE to `done`, think 0.5-1.5 s, send again.
Probes start after a warm-up and are measured for the same duration as the idle phase.

    .venv/bin/python bench/p2_page_under_chat_load.py [--chats 200] [--seconds 30] [--concurrency 300]
"""
import argparse
import asyncio
import multiprocessing
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HTTP, SLUG, CpuMeter, PgSampler, Stack, chat_turn, percentile, say  # noqa: E402


async def probe(port, sessions, seconds, gap, probers):
    samples, errors = [], []
    deadline = time.monotonic() + seconds

    async def one(k):
        conn = HTTP(port)
        i = k
        try:
            while time.monotonic() < deadline:
                cookie, _ = sessions[i % len(sessions)]
                i += probers
                t = time.monotonic()
                try:
                    status, _, body = await conn.request("GET", f"/s/{SLUG}/pre-test/", {"Cookie": cookie})
                    if status != 200 or b'data-page="item"' not in body:
                        errors.append(f"HTTP {status}")
                    else:
                        samples.append((time.monotonic() - t) * 1000)
                except Exception as error:
                    errors.append(repr(error)[:200])
                    conn.close()
                await asyncio.sleep(gap)
        finally:
            conn.close()

    await asyncio.gather(*[one(k) for k in range(probers)])
    return samples, errors


def chat_load(port, sessions, stop_at, counters):
    """Child process: N participants chatting until stop_at (time.time())."""

    async def loop(i, cookie, extra):
        rng = random.Random(i)
        await asyncio.sleep(rng.uniform(0, 2.0))
        post, sse = HTTP(port), HTTP(port)
        n = 0
        while time.time() < stop_at:
            try:
                r = await chat_turn(post, sse, cookie, extra, f"How does the model use the debt ratio? ({n})")
                n += 1
                with counters.get_lock():
                    counters[0 if r["final"] == "done" else 1] += 1
            except Exception:
                with counters.get_lock():
                    counters[1] += 1
                post.close(), sse.close()
                await asyncio.sleep(1.0)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        post.close(), sse.close()

    async def run():
        await asyncio.gather(*[loop(i, c, e) for i, (c, e) in enumerate(sessions)])

    asyncio.run(run())


def summary(name, values, errors):
    return (f"  {name:<8} n={len(values):5d}  p50={percentile(values, 50):6.1f}  p95={percentile(values, 95):6.1f}"
            f"  p99={percentile(values, 99):6.1f}  max={max(values) if values else float('nan'):7.1f} ms  errors={len(errors)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--readers", type=int, default=20, help="participants on the pre-test (not chatting)")
    parser.add_argument("--probers", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.05)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time of each phase")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of chat load before measuring")
    parser.add_argument("--concurrency", type=int, default=300, help="Celery worker threads")
    args = parser.parse_args()

    with Stack(worker_concurrency=args.concurrency, fake_behaviour={"ttft_s": 0.5, "latency_s": 2.0}) as stack:
        say(f"creating {args.readers} readers (pre-test) and {args.chats} chatters (chat step)")
        readers = [stack.cookies(p) for p in stack.participants(args.readers, prefix="p2r", step="pre_test")]
        chatters = [stack.cookies(p) for p in stack.participants(args.chats, prefix="p2c")]
        from django.db import connections

        connections.close_all()
        port = stack.web_port
        asyncio.run(probe(port, readers, 3.0, args.gap, args.probers))  # warm the process up
        say(f"phase 1: idle, {args.seconds:.0f} s")
        idle, idle_err = asyncio.run(probe(port, readers, args.seconds, args.gap, args.probers))

        say(f"phase 2: {args.chats} chats streaming; warm-up {args.warmup:.0f} s, then {args.seconds:.0f} s of probes")
        counters = multiprocessing.Array("i", 2)
        stop_at = time.time() + args.warmup + args.seconds + 1
        child = multiprocessing.get_context("fork").Process(target=chat_load, args=(port, chatters, stop_at, counters), daemon=True)
        child.start()
        try:
            time.sleep(args.warmup)
            before = counters[0]
            fake_before = stack.fake.stats()
            meter = CpuMeter({**stack.pids(), "chat load (child)": child.pid}).start()
            pg = PgSampler(stack.db_url, stack.db_name).start()
            loaded, loaded_err = asyncio.run(probe(port, readers, args.seconds, args.gap, args.probers))
            usage = meter.stop()
            pg_line = pg.stop()
            fake_after = stack.fake.stats()
            replies = counters[0] - before
            failed = counters[1]
        finally:
            child.join(timeout=args.seconds + 30)
            if child.is_alive():
                child.terminate()
                child.join(5)

        p_idle, p_loaded = percentile(idle, 95), percentile(loaded, 95)
        ratio = p_loaded / p_idle
        print()
        print("=" * 100)
        print(f"P2  GET /s/{SLUG}/pre-test/ (participant not chatting), {args.probers} sequential probers, gap {args.gap} s;"
              f" 1 uvicorn process; worker --pool threads --concurrency {args.concurrency}")
        print(summary("idle", idle, idle_err))
        print(summary("loaded", loaded, loaded_err))
        print(f"  load during the loaded phase: {args.chats} chats, {replies} replies done in {args.seconds:.0f} s "
              f"({replies / args.seconds:.1f}/s), failed/errored turns in total {failed}, fake in flight at start/end "
              f"{fake_before['in_flight']}/{fake_after['in_flight']}, max {fake_after['max_in_flight']}")
        print(f"  P2 idle p95 = {p_idle:.1f} ms, loaded p95 = {p_loaded:.1f} ms, ratio = {ratio:.2f}  ->  goal <= 1.2: "
              f"{'MET' if ratio <= 1.2 else 'MISSED'}")
        print(f"  {pg_line}")
        print(CpuMeter.report(usage))
        for error in sorted(set(idle_err + loaded_err))[:5]:
            print(f"  error sample: {error}")
        print("=" * 100)


if __name__ == "__main__":
    main()

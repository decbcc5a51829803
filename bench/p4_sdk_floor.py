#!/usr/bin/env python3
"""P4 floor: the CPU one streamed provider call costs in one process, with no database and no Redis.

P4 asks one worker process for >= 500 calls in flight at 2 s latency, i.e. >= 250 replies/s, which
leaves at most 1000 / 250 = 4 ms of CPU per reply for everything (the SDK, the stream, Redis, the
database). This script measures the part no platform change can remove: the official `openai` SDK
streaming the fake provider's default reply (about 50 SSE events), through

- `explainers.providers.llm_call` (the production path: the sync SDK) from N threads, and
- `openai.AsyncOpenAI` on one asyncio loop (the alternative the design allows), same parsing,

and prints CPU per call (user + system of this process), the calls/s and the ceiling it implies for
one process (1000 / CPU ms per call), and calls in flight that ceiling allows at the given latency.

    .venv/bin/python bench/p4_sdk_floor.py [--calls 600] [--concurrency 100] [--latency 2]
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, calls: int, run) -> dict:
    cpu0, t0 = cpu_s(), time.monotonic()
    run()
    wall, cpu = time.monotonic() - t0, cpu_s() - cpu0
    return {"path": label, "calls": calls, "calls_per_s": calls / wall, "cpu_ms": cpu / calls * 1000}


def sync_threads(base_url: str, calls: int, concurrency: int) -> None:
    from explainers.providers import LLMRequest, llm_call

    request = LLMRequest(provider="openai", model="bench", messages=[{"role": "user", "content": "Why?"}],
                         params={}, base_url=base_url, timeout_s=15)
    left = iter(range(calls))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if next(left, None) is None:
                    return
            llm_call(request)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def async_loop(base_url: str, calls: int, concurrency: int) -> None:
    import httpx2
    import openai

    async def main():
        http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=2000))
        client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, http_client=http)
        gate = asyncio.Semaphore(concurrency)

        async def one():
            async with gate:
                parts, buffer = [], b""
                async with client.chat.completions.with_streaming_response.create(
                    model="bench", messages=[{"role": "user", "content": "Why?"}], stream=True
                ) as response:
                    async for chunk in response.iter_bytes():
                        buffer += chunk
                        while b"\n" in buffer:
                            line, buffer = buffer.split(b"\n", 1)
                            if line.startswith(b"data: {"):
                                for choice in json.loads(line[6:]).get("choices") or []:
                                    parts.append((choice.get("delta") or {}).get("content") or "")
                return "".join(parts)

        await asyncio.gather(*(one() for _ in range(calls)))
        await client.close()

    asyncio.run(main())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--ttft", type=float, default=0.5)
    args = parser.parse_args()

    import django

    django.setup()
    from explainers.fakellm import FakeLLM

    fake = FakeLLM(port_file_dir=tempfile.mkdtemp(prefix="p4floor-")).start()
    try:
        fake.set_behaviour(ttft_s=args.ttft, latency_s=args.latency)
        base = fake.openai_base_url
        sync_threads(base, 20, 4)  # warm up: imports, connection pool
        rows = [
            measure(f"sync SDK, {args.concurrency} threads", args.calls,
                    lambda: sync_threads(base, args.calls, args.concurrency)),
            measure(f"AsyncOpenAI, {args.concurrency} tasks", args.calls,
                    lambda: async_loop(base, args.calls, args.concurrency)),
        ]
    finally:
        fake.stop()
    print(f"\nfake provider: ttft {args.ttft} s, latency {args.latency} s; CPU of this one process")
    print(f"{'path':<28} {'calls/s':>8} {'CPU ms/call':>12} {'ceiling/s':>10} {'in flight at ceiling':>21}")
    for row in rows:
        ceiling = 1000 / row["cpu_ms"]
        print(f"{row['path']:<28} {row['calls_per_s']:>8.1f} {row['cpu_ms']:>12.2f} {ceiling:>10.0f} "
              f"{ceiling * args.latency:>21.0f}")
    print("P4 needs >= 250 replies/s (500 in flight x 2 s) from one process: <= 4 ms CPU per reply in all.")


if __name__ == "__main__":
    main()

"""A launch burst: N new participants arrive at once on one web process (the study link, then the consent page).

    .venv/bin/python bench/burst_arrivals.py [--arrivals 500] [--rounds 1] [--pool-size 20]

Prints the errors (5xx or connection errors), other unexpected statuses, p50/p95/max of an arrival (both
requests), the most PostgreSQL connections the web process held at once (pg_stat_activity), the web process's CPU per request and the load average. The entry rate limits are off for
the web process it starts (every arrival comes from 127.0.0.1). tests/test_hardening_web.py runs the same
`burst` against the test server.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

@dataclass
class BurstResult:
    seconds: list[float] = field(default_factory=list)  # per successful arrival
    errors: list[str] = field(default_factory=list)     # 5xx or connection errors
    unexpected: list[str] = field(default_factory=list)  # any other status than 302 then 200

    def percentile(self, p: float) -> float:
        from bench.common import percentile

        return percentile(self.seconds, p)


async def _request(reader, writer, host: str, target: str, cookie: str = "") -> tuple[int, dict, list[str]]:
    """Send one GET on a keep-alive connection; return (status, headers, Set-Cookie values); read the body."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Accept: text/html"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers, cookies = {}, []
    for line in head[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            name, value = name.strip().lower(), value.strip()
            if name == "set-cookie":
                cookies.append(value.split(";", 1)[0])
            headers[name] = value
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, cookies


async def _arrival(host: str, port: int, slug: str, pid: str, go: asyncio.Event, result: BurstResult,
                   timeout: float) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as error:
        result.errors.append(f"connect: {error!r}")
        return
    try:
        await go.wait()
        started = time.monotonic()
        query = urlencode({"PROLIFIC_PID": pid, "STUDY_ID": "BURST", "SESSION_ID": f"S-{pid}"})
        status, headers, cookies = await asyncio.wait_for(
            _request(reader, writer, f"{host}:{port}", f"/s/{slug}/?{query}"), timeout)
        if status >= 500 or status != 302:
            (result.errors if status >= 500 else result.unexpected).append(f"entry: HTTP {status}")
            return
        location = headers["location"]
        status, _, _ = await asyncio.wait_for(
            _request(reader, writer, f"{host}:{port}", location, "; ".join(cookies)), timeout)
        if status != 200:
            (result.errors if status >= 500 else result.unexpected).append(f"consent: HTTP {status}")
            return
        result.seconds.append(time.monotonic() - started)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        result.errors.append(f"connection: {error!r}")
    finally:
        writer.close()


async def burst(port: int, slug: str, n: int, *, host: str = "127.0.0.1", label: str = "burst",
                timeout: float = 120.0) -> BurstResult:
    """N arrivals, each on its own connection: all connect first, then all send at once."""
    result = BurstResult()
    go = asyncio.Event()
    tasks = [asyncio.create_task(_arrival(host, port, slug, pid_for(label, i), go, result, timeout))
             for i in range(n)]
    await asyncio.sleep(0.5)  # let the connections open
    go.set()
    await asyncio.gather(*tasks)
    return result


def pid_for(label: str, i: int) -> str:
    """A valid Prolific id (24 hex digits), new for each label and number."""
    return hashlib.sha256(f"{label}-{i}".encode()).hexdigest()[:24]


class ConnectionWatch:
    """The most PostgreSQL connections one process held at once: the rows of pg_stat_activity whose client
    port is one of that process's sockets, sampled every 50 ms in a thread."""

    def __init__(self, dsn: str, pid: int):
        self.dsn, self.pid = dsn, pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil
        import psycopg

        process = psutil.Process(self.pid)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                ports = [c.laddr.port for c in process.net_connections(kind="tcp") if c.raddr]
                (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                                        [ports]).fetchone()
                self.peak = max(self.peak, count)
                self.samples += 1
                time.sleep(0.05)

    def __enter__(self) -> "ConnectionWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrivals", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1, help="bursts one after the other (new PIDs each)")
    parser.add_argument("--pool-size", type=int, default=None, help="DB_POOL_MAX_SIZE of the web process")
    parser.add_argument("--db-name", default="teachback_h2_burst")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    args = parser.parse_args()

    # The web process inherits these (Stack.env copies the environment).
    os.environ.update({"ENTRY_RATE_PER_IP": "0", "ENTRY_RATE_PER_SESSION": "0"})
    if args.pool_size is not None:
        os.environ["DB_POOL_MAX_SIZE"] = str(args.pool_size)
    from bench.common import Stack, proc_cpu_s, say

    with Stack(db_name=args.db_name, redis_url=args.redis_url, worker=False) as stack:
        from django.conf import settings

        web_pid = stack.pids()["web"]
        say(f"web pool: DB_POOL_MAX_SIZE={settings.DB_POOL_MAX_SIZE}, timeout {settings.DB_POOL_TIMEOUT_S} s")
        for round_number in range(1, args.rounds + 1):
            cpu0 = proc_cpu_s(web_pid)
            started = time.monotonic()
            with ConnectionWatch(stack.db_url, web_pid) as watch:
                result = asyncio.run(burst(stack.web_port, stack.version.study.slug, args.arrivals,
                                           label=f"bench-{os.getpid()}-{round_number}"))
            wall = time.monotonic() - started
            cpu = proc_cpu_s(web_pid) - cpu0
            requests = 2 * len(result.seconds) or 1
            print(f"round {round_number}: {args.arrivals} arrivals in {wall:.1f} s: "
                  f"{len(result.errors)} errors, {len(result.unexpected)} unexpected, {len(result.seconds)} ok")
            print(f"  arrival (entry + consent page): p50 {result.percentile(50) * 1000:.0f} ms, "
                  f"p95 {result.percentile(95) * 1000:.0f} ms, max {max(result.seconds, default=0) * 1000:.0f} ms")
            print(f"  PostgreSQL connections of the web process: at most {watch.peak}")
            print(f"  web CPU: {cpu:.1f} s, {cpu / requests * 1000:.1f} ms per request; "
                  f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            for line in sorted(set(result.errors + result.unexpected))[:10]:
                print(f"    {line}")


if __name__ == "__main__":
    main()

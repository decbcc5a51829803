import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx2
from django.core.management.base import BaseCommand, CommandError

from participants.bots import REPLY_TIMEOUT_S, AnswerPolicy, bot_run
from participants.outcomes import arm_head, outcome_lines, run_report
from studies.selectors import entry_link_token, study_version_open, study_version_protocol


class Command(BaseCommand):
    help = ("Send N simulated participants through the real HTTP flow of a live study and report, per arm, who "
            "was allocated and completed and what the chat arms answered. Exits non-zero when a bot did not "
            "complete, an LLM arm left turns unanswered or a designed arm got nobody.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("-n", type=int, default=10)
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--policy", default="random", help="random | key | accuracy:P")
        parser.add_argument("--concurrency", type=int, default=10)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--chat-turns", type=int, default=1,
                            help="messages each bot sends in a chat arm, each after the last reply (default 1)")
        parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT_S,
                            help="seconds a bot waits for one reply before moving on (default %(default)s)")

    def handle(self, *args, slug, n, base_url, policy, concurrency, seed, chat_turns, reply_timeout, **options):
        version = study_version_open(slug=slug)
        if version is None:
            raise CommandError(f"{slug} has no open version")
        protocol = study_version_protocol(version)
        token = entry_link_token(slug=slug, kind="simulated")
        seeds = random.Random(seed).sample(range(2**31), n)
        pids = [f"bot-{uuid.uuid4().hex}" for _ in range(n)]  # to find the run's participants afterwards
        try:
            policies = [AnswerPolicy(policy, protocol, version.target_keys, random.Random(s), chat_turns=chat_turns,
                                     reply_timeout_s=reply_timeout) for s in seeds]
        except ValueError as error:
            raise CommandError(str(error)) from None
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
                results = list(pool.map(
                    lambda pair: bot_run(base_url=base_url, slug=slug, policy=pair[0], link_token=token, pid=pair[1]),
                    zip(policies, pids),
                ))
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as error:
            # One line, not a traceback: the usual cause is a server that is not running.
            raise CommandError(f"no server answers at {base_url} ({error}): is it running? The demo starts with "
                               "`python3 run.py demo`, and `python3 run.py manage study_bots ...` finds its port") from None
        completed = [r for r in results if r.completed]
        code = version.spec["recruitment"]["completion_code"]
        with_code = sum(1 for r in completed if code in r.finish_url)
        self.stdout.write(
            f"{slug}: {n} bots, {len(completed)} completion redirects ({with_code} with the completion code), "
            f"{n - len(completed)} failed, {time.monotonic() - started:.1f} s"
        )
        report = run_report(version=version, pids=pids, results=results, settle_s=reply_timeout)
        for line in report["lines"]:
            self.stdout.write(line)
        for arm in report["arms"]:
            self.stdout.write(arm_head(arm))
            for line in outcome_lines(arm):
                self.stdout.write(line)
        for r in results:
            if r.error:
                self.stdout.write(f"  failed: {r.error}")
        problems = list(report["problems"])
        if len(completed) != n:
            problems.append("not every bot completed")
        if problems:
            for problem in problems:
                self.stdout.write(f"FAILED: {problem}")
            raise CommandError("; ".join(problems))

import random
import time
from concurrent.futures import ThreadPoolExecutor

from django.core.management.base import BaseCommand, CommandError

from participants.bots import AnswerPolicy, bot_run
from studies.selectors import entry_link_token, study_version_open, study_version_protocol


class Command(BaseCommand):
    help = "Send N simulated participants through the real HTTP flow of a live study and report the outcome."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("-n", type=int, default=10)
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--policy", default="random", help="random | key | accuracy:P")
        parser.add_argument("--concurrency", type=int, default=10)
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, slug, n, base_url, policy, concurrency, seed, **options):
        version = study_version_open(slug=slug)
        if version is None:
            raise CommandError(f"{slug} has no open version")
        protocol = study_version_protocol(version)
        token = entry_link_token(slug=slug, kind="simulated")
        seeds = random.Random(seed).sample(range(2**31), n)
        try:
            policies = [AnswerPolicy(policy, protocol, version.target_keys, random.Random(s)) for s in seeds]
        except ValueError as error:
            raise CommandError(str(error)) from None
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
            results = list(pool.map(
                lambda p: bot_run(base_url=base_url, slug=slug, policy=p, link_token=token),
                policies,
            ))
        completed = [r for r in results if r.completed]
        code = version.spec["recruitment"]["completion_code"]
        with_code = sum(1 for r in completed if code in r.finish_url)
        self.stdout.write(
            f"{slug}: {n} bots, {len(completed)} completion redirects ({with_code} with the completion code), "
            f"{n - len(completed)} failed, {time.monotonic() - started:.1f} s"
        )
        for r in results:
            if r.error:
                self.stdout.write(f"  failed: {r.error}")
        if len(completed) != n:
            raise CommandError("not every bot completed")

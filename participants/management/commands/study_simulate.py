import random
from concurrent.futures import ThreadPoolExecutor
from statistics import mean

from django.core.management.base import BaseCommand, CommandError

from explainers.models import LearnerModelSnapshot
from participants.bots import bot_run
from participants.models import Participant, Response
from participants.services import identifier_hash
from participants.simulate import Persona, recovery, recovery_summary
from studies.selectors import entry_link_token, study_version_open, study_version_protocol


class Command(BaseCommand):
    help = ("Send N simulated learners with planted knowledge through a live study over HTTP; report, per arm, "
            "the gain and how well the explainer's learner model recovered the planted state.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--n", type=int, default=40)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=10)

    def handle(self, *args, slug, n, seed, base_url, concurrency, **options):
        version = study_version_open(slug=slug)
        if version is None:
            raise CommandError(f"{slug} has no open version")
        protocol = study_version_protocol(version)
        token = entry_link_token(slug=slug, kind="simulated")
        rng = random.Random(seed)
        personas = [Persona.planted(protocol, version.target_keys, random.Random(rng.getrandbits(64))) for _ in range(n)]
        pids = [f"sim-{seed}-{i:04d}-{rng.getrandbits(32):08x}" for i in range(n)]
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
            results = list(pool.map(
                lambda pair: bot_run(base_url=base_url, slug=slug, policy=pair[0], link_token=token, pid=pair[1]),
                zip(personas, pids),
            ))
        failed = [r.error for r in results if not r.completed]
        rows = []
        for persona, pid in zip(personas, pids):
            participant = Participant.objects.filter(study=version.study, pid_hash=identifier_hash(pid)).first()
            if participant is None:
                continue
            scores = {phase: [r.score for r in Response.objects.filter(participant=participant, phase=phase)
                              if r.score is not None] for phase in ("pre_test", "post_test")}
            snapshot = None
            if participant.conversation_id:
                snapshot = LearnerModelSnapshot.objects.filter(conversation_id=participant.conversation_id).order_by("-index").first()
            rows.append({
                "arm": participant.arm,
                "pre": mean(scores["pre_test"]) if scores["pre_test"] else None,
                "post": mean(scores["post_test"]) if scores["post_test"] else None,
                "recovery": recovery(snapshot.state, persona.knows_after) if snapshot else None,
            })
        self.stdout.write(f"{slug}: {n} simulated learners (seed {seed}), {n - len(failed)} completed")
        self.stdout.write(f"{'arm':<10} {'n':>3} {'pre':>6} {'post':>6} {'gain':>6}  learner-model recovery (known/unknown: mastery >= 0.5)")
        for arm in sorted({r["arm"] for r in rows}):
            group = [r for r in rows if r["arm"] == arm and r["pre"] is not None and r["post"] is not None]
            if not group:
                continue
            pre, post = mean(r["pre"] for r in group), mean(r["post"] for r in group)
            line = f"{arm:<10} {len(group):>3} {pre:>6.2f} {post:>6.2f} {post - pre:>+6.2f}"
            recovered = [r["recovery"] for r in group if r["recovery"]]
            if recovered:
                summary = recovery_summary(recovered)
                line += (f"  accuracy {summary['accuracy']:.2f} over {summary['n']} concepts; balanced accuracy "
                         f"{summary['balanced_accuracy']:.2f} (chance 0.50); always-the-common-answer "
                         f"{summary['majority']:.2f}")
            else:
                line += "  (no learner model in this arm)"
            self.stdout.write(line)
        for error in failed:
            self.stdout.write(f"  failed: {error}")
        if failed:
            raise CommandError(f"{len(failed)} simulated learner(s) did not complete")

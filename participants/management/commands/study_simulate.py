import random
from concurrent.futures import ThreadPoolExecutor
from statistics import mean

from django.core.management.base import BaseCommand, CommandError

from participants.bots import REPLY_TIMEOUT_S, bot_run
from participants.outcomes import (
    arm_head, conversations_with_learner_model, outcome_lines, recovery_snapshots, run_report, scores_by_phase,
)
from participants.simulate import Persona, recovery, recovery_summary
from studies.selectors import entry_link_token, study_version_open, study_version_protocol


class Command(BaseCommand):
    help = ("Send N simulated learners with planted knowledge through a live study over HTTP; report, per arm, "
            "what the arm answered, the gain, and how well the explainer's learner model recovered the planted "
            "state. Exits non-zero when an LLM arm left turns unanswered or a designed arm got nobody.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--n", type=int, default=40)
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--concurrency", type=int, default=10)
        parser.add_argument("--reply-timeout", type=float, default=REPLY_TIMEOUT_S,
                            help="seconds a learner waits for one reply before moving on (default %(default)s)")

    def handle(self, *args, slug, n, seed, base_url, concurrency, reply_timeout, **options):
        version = study_version_open(slug=slug)
        if version is None:
            raise CommandError(f"{slug} has no open version")
        protocol = study_version_protocol(version)
        token = entry_link_token(slug=slug, kind="simulated")
        rng = random.Random(seed)
        personas = [Persona.planted(protocol, version.target_keys, random.Random(rng.getrandbits(64))) for _ in range(n)]
        for persona in personas:
            persona.reply_timeout_s = reply_timeout
        pids = [f"sim-{seed}-{i:04d}-{rng.getrandbits(32):08x}" for i in range(n)]
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
            results = list(pool.map(
                lambda pair: bot_run(base_url=base_url, slug=slug, policy=pair[0], link_token=token, pid=pair[1]),
                zip(personas, pids),
            ))
        failed = [r.error for r in results if not r.completed]
        self.stdout.write(f"{slug}: {n} simulated learners (seed {seed}), {n - len(failed)} completed")
        report = run_report(version=version, pids=pids, results=results, settle_s=reply_timeout)
        for line in report["lines"]:
            self.stdout.write(line)
        rows = self._learning(personas, pids, report["participants"])
        for arm in report["arms"]:
            self.stdout.write(arm_head(arm) + self._gain(rows.get(arm["id"], [])))
            for line in outcome_lines(arm) + self._recovery_lines(rows.get(arm["id"], [])):
                self.stdout.write(line)
        for error in failed:
            self.stdout.write(f"  failed: {error}")
        problems = list(report["problems"])
        if failed:
            problems.append(f"{len(failed)} simulated learner(s) did not complete")
        if problems:
            for problem in problems:
                self.stdout.write(f"FAILED: {problem}")
            raise CommandError("; ".join(problems))

    @staticmethod
    def _learning(personas, pids, found) -> dict[str, list[dict]]:
        """Per arm: each participant's pre and post score and the snapshot that recovery is judged on."""
        participants = [(persona, found[pid]) for persona, pid in zip(personas, pids) if pid in found]
        scores = scores_by_phase(participant_ids=[p.pk for _, p in participants])
        conversations = [p.conversation_id for _, p in participants if p.conversation_id]
        snapshots = recovery_snapshots(conversation_ids=conversations)
        with_model = conversations_with_learner_model(conversation_ids=conversations)
        rows: dict[str, list[dict]] = {}
        for persona, participant in participants:
            if not participant.arm:
                continue
            s = scores.get(participant.pk, {"pre_test": [], "post_test": []})
            snapshot = snapshots.get(participant.conversation_id)
            rows.setdefault(participant.arm, []).append({
                "pre": mean(s["pre_test"]) if s["pre_test"] else None,
                "post": mean(s["post_test"]) if s["post_test"] else None,
                "has_model": participant.conversation_id in with_model,
                "source": snapshot.source if snapshot else None,
                "recovery": recovery(snapshot.state, persona.knows_after) if snapshot else None,
            })
        return rows

    @staticmethod
    def _gain(group: list[dict]) -> str:
        both = [r for r in group if r["pre"] is not None and r["post"] is not None]
        if not both:
            return "; no participant took both tests"
        pre, post = mean(r["pre"] for r in both), mean(r["post"] for r in both)
        return f"; pre {pre:.2f} post {post:.2f} gain {post - pre:+.2f} (n {len(both)})"

    @staticmethod
    def _recovery_lines(group: list[dict]) -> list[str]:
        """Recovery from each conversation's last snapshot after a participant turn, apart by its source."""
        if not group:
            return []
        if not any(r["has_model"] for r in group):
            return ["  learner-model recovery: (no learner model in this arm)"]
        lines = []
        for source in ("llm", "rules"):
            counts = [r["recovery"] for r in group if r["source"] == source]
            if counts:
                summary = recovery_summary(counts)
                lines.append(
                    f"  learner-model recovery ({source}, {len(counts)} conversation{'' if len(counts) == 1 else 's'}; "
                    "known/unknown: mastery >= 0.5): "
                    f"accuracy {summary['accuracy']:.2f} over {summary['n']} concepts; balanced accuracy "
                    f"{summary['balanced_accuracy']:.2f} (chance 0.50); always-the-common-answer "
                    f"{summary['majority']:.2f}")
        none = sum(1 for r in group if r["has_model"] and r["source"] is None)
        if none:  # they contribute nothing: a pre-test snapshot says what the pre-test said, not what was learned
            lines.append(f"  learner-model recovery: {none} conversation(s) with no snapshot after a participant turn")
        return lines

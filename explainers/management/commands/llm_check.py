from django.core.management.base import BaseCommand, CommandError

from explainers.probe import DEFAULT_MODEL, default_endpoint_probe, version_llm_check
from studies.services import StudyStateError, study_version_get

COLUMNS = [("arm", 10), ("kind", 8), ("endpoint", 30), ("reach", 5), ("stream", 6), ("usage", 5),
           ("tools auto", 10), ("required", 8), ("schema", 6), ("j.object", 8), ("context", 12),
           ("TTFT", 8), ("tok/s", 6), ("use tools", 9), ("structured", 12)]


class Command(BaseCommand):
    help = ("Probe the endpoint of each chat and agentic arm with the arm's own settings and store the report on "
            "the version (the launch checklist shows it); without SLUG, probe the default endpoint (LLM_BASE_URL).")

    def create_parser(self, prog_name, subcommand, **kwargs):
        # `--version N` names a study version here, so it replaces Django's own --version (its release)
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug", nargs="?", default=None)
        parser.add_argument("--version", type=int, default=None, dest="number",
                            help="version number (default: the latest)")
        parser.add_argument("--model", default=DEFAULT_MODEL, help="model name for the default endpoint")

    def handle(self, *args, slug, number, model, **options):
        if slug is None:
            reports = {"(default)": default_endpoint_probe(model=model)}
            self.stdout.write(f"the default endpoint, model {model!r}:")
        else:
            try:
                version = study_version_get(slug=slug, number=number)
            except StudyStateError as error:
                raise CommandError(str(error)) from None
            report = version_llm_check(version=version)
            reports = report["arms"]
            self.stdout.write(f"{slug} v{version.number}: checked from {report['host']} at {report['checked_at']}")
            if not reports:
                self.stdout.write("  no chat or agentic arm: nothing to probe")
                return
        self.stdout.write("  ".join(name.ljust(width) for name, width in COLUMNS))
        for arm_id, r in reports.items():
            self.stdout.write("  ".join(str(value).ljust(width)
                                        for value, (_, width) in zip(_row(arm_id, r), COLUMNS)))
        for arm_id, r in reports.items():
            for name, error in (r.get("errors") or {}).items():
                self.stdout.write(f"  {arm_id} {name}: {error}")


def _row(arm_id: str, r: dict) -> list:
    context = r.get("context_window") or {}
    if context.get("tokens"):
        window = str(context["tokens"])
    elif context.get("at_least"):
        window = f">={context['at_least']}"
    elif context.get("below"):
        window = f"<{context['below']}"
    else:
        window = "?"
    endpoint = "none" if not r.get("endpoint") else ("scripted" if r.get("scripted") else (r.get("base_url") or "provider API"))
    return [arm_id, r.get("kind") or "", endpoint, _yes(r.get("reachable")), _yes(r.get("streaming")),
            _yes(r.get("usage")), _yes(r.get("tools_auto")), _yes(r.get("tools_required")),
            _yes(r.get("json_schema")), _yes(r.get("json_object")), window,
            f"{r['ttft_ms']} ms" if r.get("ttft_ms") is not None else "?",
            r.get("tokens_per_s") if r.get("tokens_per_s") is not None else "?",
            r["recommended"]["tool_choice"] or "?", r["recommended"]["structured_output"] or "?"]


def _yes(value) -> str:
    return "?" if value is None else ("yes" if value else "no")

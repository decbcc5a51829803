"""manage.py study_prereg SLUG [--version N] [--out DIR]: the preregistration document of a study version."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from analysis.prereg import NO_PLAN, prereg_html, prereg_markdown
from studies.services import StudyStateError, study_version_get
from studies.spec import localize


class Command(BaseCommand):
    help = ("Write prereg.md and a self-contained prereg.html (inline CSS, nothing fetched) from a stored study "
            "version: its hash, design and analysis plan, ready for OSF or AsPredicted. Exits non-zero when the "
            "version has no analysis plan (the design is still written).")

    def create_parser(self, prog_name, subcommand, **kwargs):
        # `--version N` names a study version here, so it replaces Django's own --version (its release)
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--version", type=int, default=None, dest="number",
                            help="version number (default: the latest)")
        parser.add_argument("--out", default=".", help="folder to write prereg.md and prereg.html to (default: .)")

    def handle(self, *args, slug, number, out, **options):
        try:
            version = study_version_get(slug=slug, number=number)
        except StudyStateError as error:
            raise CommandError(str(error)) from None
        spec = version.spec
        text = prereg_markdown(spec=spec, number=version.number, sha256=version.sha256, state=version.state,
                               target_sha256=version.target_sha256, generated_on=timezone.localdate())
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prereg.md").write_text(text, encoding="utf-8")
        title = f"Preregistration: {localize(spec['title'], 'en')}"
        (folder / "prereg.html").write_text(prereg_html(markdown=text, title=title), encoding="utf-8")
        where = f"{folder / 'prereg.md'} and {folder / 'prereg.html'}"
        if spec.get("analysis") is None:
            raise CommandError(f"{slug} v{version.number}: {NO_PLAN} Wrote the design only to {where}.")
        self.stdout.write(self.style.SUCCESS(f"wrote the preregistration of {slug} v{version.number} "
                                             f"(sha256 {version.sha256}) to {where}"))

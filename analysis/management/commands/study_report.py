"""manage.py study_report SLUG --out report.html: the study's report as one self-contained HTML file."""
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from analysis.report import report_html
from studies.models import Study


class Command(BaseCommand):
    help = ("Write the study report (flow, measures per arm, statistics, learner-model fidelity) as one "
            "self-contained HTML file: inline CSS and SVG, no scripts, no external resources.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--out", default="report.html", help="file to write (default: report.html)")
        parser.add_argument("--include-simulated", action="store_true",
                            help="include simulated participants (bots); left out by default")
        parser.add_argument("--include-pilot", action="store_true", help="include pilot participants")

    def handle(self, *args, slug, out, include_simulated, include_pilot, **options):
        try:
            page = report_html(slug=slug, include_simulated=include_simulated, include_pilot=include_pilot)
        except Study.DoesNotExist:
            raise CommandError(f"no study {slug!r}") from None
        path = Path(out)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
        who = "simulated included" if include_simulated else "simulated excluded"
        self.stdout.write(self.style.SUCCESS(f"wrote the report of {slug} to {path} ({len(page):,} bytes; {who})"))

"""manage.py study_export SLUG --format csv|parquet|jsonl --out DIR: the study's data as tidy files."""
from django.core.management.base import BaseCommand, CommandError

from analysis.export import FORMATS, study_export
from studies.models import Study


class Command(BaseCommand):
    help = "Export a study's data (one file per table, codebook.json/.md, manifest.json) into a folder."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--format", dest="fmt", choices=FORMATS, default="csv")
        parser.add_argument("--out", required=True, help="folder to write into (created if missing)")
        simulated = parser.add_mutually_exclusive_group()
        simulated.add_argument("--include-simulated", dest="include_simulated", action="store_true", default=True,
                               help="keep bots, flagged is_simulated (the default)")
        simulated.add_argument("--exclude-simulated", dest="include_simulated", action="store_false",
                               help="leave bots out")
        parser.add_argument("--include-pilot", action="store_true", help="keep pilot entries (flagged is_pilot)")

    def handle(self, *args, slug, fmt, out, include_simulated, include_pilot, **options):
        try:
            manifest = study_export(slug=slug, out=out, fmt=fmt, include_simulated=include_simulated,
                                    include_pilot=include_pilot)
        except Study.DoesNotExist:
            raise CommandError(f"no study {slug!r}")
        for table, rows in manifest["row_counts"].items():
            self.stdout.write(f"{table:<16} {rows:>9} rows")
        self.stdout.write(self.style.SUCCESS(f"exported {slug} ({fmt}) to {out}"))

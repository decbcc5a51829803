from django.core.management.base import BaseCommand

from studies.management.study_file import study_file_or_error


class Command(BaseCommand):
    help = "Check a study folder (or its study.yaml) and print every error with its file, line and field."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path, **options):
        study_file = study_file_or_error(path)
        spec = study_file.spec
        self.stdout.write(f"{spec['slug']}: valid (sha256 {study_file.sha256}, {len(spec['items'])} items, "
                          f"{len(spec['arms'])} arms)")

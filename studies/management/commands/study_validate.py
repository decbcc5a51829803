from django.core.management.base import BaseCommand, CommandError

from studies.spec import StudyFileInvalid, study_file_read


class Command(BaseCommand):
    help = "Check a study folder (or its study.yaml) and print every error with its file, line and field."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path, **options):
        try:
            study_file = study_file_read(path)
        except StudyFileInvalid as invalid:
            raise CommandError(f"{len(invalid.errors)} error(s):\n{invalid}") from None
        spec = study_file.spec
        self.stdout.write(f"{spec['slug']}: valid (sha256 {study_file.sha256}, {len(spec['items'])} items, "
                          f"{len(spec['arms'])} arms)")

from django.core.management.base import BaseCommand, CommandError

from studies.services import study_version_create
from studies.spec import StudyFileInvalid, study_file_read


class Command(BaseCommand):
    help = "Validate a study folder and store it as a new draft version (nothing is saved if it has errors)."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path, **options):
        try:
            study_file = study_file_read(path)
        except StudyFileInvalid as invalid:
            raise CommandError(f"{len(invalid.errors)} error(s), nothing saved:\n{invalid}") from None
        version, created = study_version_create(study_file=study_file)
        verb = "loaded as" if created else "unchanged: already"
        self.stdout.write(f"{version.study.slug}: {verb} v{version.number} ({version.state}, sha256 {version.sha256})")

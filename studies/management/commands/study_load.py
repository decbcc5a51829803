from django.core.management.base import BaseCommand

from studies.management.study_file import study_file_or_error
from studies.services import study_version_create


class Command(BaseCommand):
    help = "Validate a study folder and store it as a new draft version (nothing is saved if it has errors)."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, path, **options):
        study_file = study_file_or_error(path, consequence=", nothing saved")
        version, created = study_version_create(study_file=study_file, actor=None)  # the shell: audited as system
        verb = "loaded as" if created else "unchanged: already"
        self.stdout.write(f"{version.study.slug}: {verb} v{version.number} ({version.state}, sha256 {version.sha256})")

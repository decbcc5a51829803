from django.core.management.base import BaseCommand, CommandError

from studies.services import StudyStateError, study_state_set

STATES = {"pause": "paused", "resume": "live", "close": "closed"}


class Command(BaseCommand):
    help = "Pause, resume or close the open version of a study (audited as system). People inside finish."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("action", choices=sorted(STATES))

    def handle(self, *args, slug, action, **options):
        try:
            version = study_state_set(slug=slug, state=STATES[action], actor=None)
        except StudyStateError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{slug}: v{version.number} is {version.state}")

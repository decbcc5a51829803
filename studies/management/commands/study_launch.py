from django.core.management.base import BaseCommand, CommandError

from studies.selectors import entry_link_token
from studies.services import StudyStateError, study_launch
from studies.spec import StudyFileInvalid


class Command(BaseCommand):
    help = "Freeze a draft version (the latest by default) and make it live; print the participant links."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--number", type=int, default=None, help="version number (default: the latest)")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, slug, number, base_url, **options):
        try:
            launched = study_launch(slug=slug, number=number, actor=None)  # the shell: audited as system
        except (StudyStateError, StudyFileInvalid) as error:
            raise CommandError(str(error)) from None
        link = f"{base_url.rstrip('/')}/s/{slug}/"
        self.stdout.write(f"{slug}: v{launched.number} is live (sha256 {launched.sha256})")
        if launched.target_sha256:
            self.stdout.write(f"  target sha256 {launched.target_sha256}; {len(launched.target_keys)} keys frozen")
        self.stdout.write(f"  Prolific link: {link}?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}")
        self.stdout.write(f"  pilot link:    {link}?pilot={entry_link_token(slug=slug, kind='pilot')}")

from django.core.management.base import BaseCommand, CommandError

from explainers.launch import LaunchRefused, study_launch_checked
from studies.selectors import entry_link_token
from studies.services import StudyStateError
from studies.spec import StudyFileInvalid


class Command(BaseCommand):
    help = ("Freeze a draft version (the latest by default) and make it live; print the participant links. "
            "Refuses a version with an arm that cannot run here (no endpoint, no price for a billed model, a "
            "capability the last llm_check found missing) unless --allow names the arm.")

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--number", type=int, default=None, help="version number (default: the latest)")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--allow", action="append", default=[], metavar="ARM",
                            help="launch although this arm cannot run here (repeatable); recorded as a waiver")

    def handle(self, *args, slug, number, base_url, allow, **options):
        try:  # the shell: audited as system
            launched = study_launch_checked(slug=slug, number=number, actor=None, allow=allow)
        except (LaunchRefused, StudyStateError, StudyFileInvalid) as error:
            raise CommandError(str(error)) from None
        link = f"{base_url.rstrip('/')}/s/{slug}/"
        self.stdout.write(f"{slug}: v{launched.number} is live (sha256 {launched.sha256})")
        for arm, reasons in (launched.launch_waivers or {}).items():
            self.stdout.write(self.style.WARNING(f"  launched anyway: arm {arm}: {'; '.join(reasons)}"))
        if launched.target_sha256:
            self.stdout.write(f"  target sha256 {launched.target_sha256}; {len(launched.target_keys)} keys frozen")
        self.stdout.write(f"  Prolific link: {link}?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}")
        self.stdout.write(f"  pilot link:    {link}?pilot={entry_link_token(slug=slug, kind='pilot')}")

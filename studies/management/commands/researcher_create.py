from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from studies.models import Membership, Study
from studies.services import MembershipError, membership_set


class Command(BaseCommand):
    help = ("Create a researcher login for /console/ (or reset an existing one's password); optionally give "
            "them a role on a study (audited as system).")

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--superuser", action="store_true",
                            help="also a Django superuser (the admin site, every table); not needed for /console/")
        parser.add_argument("--study", metavar="SLUG", help="give the researcher a role on this study")
        parser.add_argument("--role", choices=Membership.Role.values, help="the role on --study")

    def handle(self, *args, username, password, email, superuser, study, role, **options):
        if bool(study) != bool(role):
            raise CommandError("--study and --role go together")
        study_row = Study.objects.filter(slug=study).first() if study else None
        if study and study_row is None:
            raise CommandError(f"no study {study!r}; load it first (manage.py study_load)")
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=username, defaults={"email": email})
            user.is_staff = True  # researchers log in; the roles on studies decide what they see
            if superuser:
                user.is_superuser = True
            user.set_password(password)
            user.save()
            if study_row is not None:
                try:
                    membership_set(actor=None, study=study_row, username=username, role=role)
                except MembershipError as error:
                    raise CommandError(str(error)) from None
        kind = "superuser" if user.is_superuser else "researcher"
        line = f"{kind} {username}: {'created' if created else 'password reset'}"
        if study_row is not None:
            line += f"; {role} of {study}"
        self.stdout.write(line)

import sys

from django.core.management.base import BaseCommand

from studies.audit import audit_check


class Command(BaseCommand):
    help = "Check the audit trail's hash chain and head: one line per problem and exit 1, or the row count and exit 0."

    def handle(self, *args, **options):
        check = audit_check()
        if check.problems:
            for problem in check.problems:
                self.stdout.write(problem)
            sys.exit(1)
        self.stdout.write(f"{check.rows} rows, chain intact (last hash {check.last_hash})")

import json

from django.core.management.base import BaseCommand

from studies.spec import study_json_schema


class Command(BaseCommand):
    help = "Print the JSON Schema of the study file."

    def handle(self, *args, **options):
        self.stdout.write(json.dumps(study_json_schema(), indent=2, ensure_ascii=False))

from django.apps import AppConfig
from django.db.models.signals import pre_delete


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "researcher console"

    def ready(self):
        # The one guard every deletion of a membership passes, cascades and the shell included (console.accounts).
        from studies.models import Membership

        from .accounts import membership_pre_delete

        pre_delete.connect(membership_pre_delete, sender=Membership, dispatch_uid="console.membership_last_owner")

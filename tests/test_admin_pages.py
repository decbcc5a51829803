"""Every model page of the admin renders for a superuser, and the read-only ones offer no add or delete."""
import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

from studies.admin import ReadOnlyAdmin

pytestmark = pytest.mark.django_db


def test_every_admin_changelist_renders_and_read_only_ones_refuse_changes(client, launch, enter, step_through):
    version = launch()
    enter(version, pid="admin-pages-0000000000000")
    client.force_login(get_user_model().objects.create_superuser("root", password="a-long-test-password-42"))
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        page = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert page.status_code == 200, meta.label
        if isinstance(model_admin, ReadOnlyAdmin):
            assert client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add")).status_code == 403
            assert 'name="_save"' not in page.content.decode()

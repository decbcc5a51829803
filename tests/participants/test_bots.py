"""Bots go through the real HTTP flow of a running server and end on the completion redirect."""
import pytest
from django.core.management import call_command

from conftest import static_only
from participants.models import Participant, Response


@pytest.mark.django_db(transaction=True)
def test_fifty_bots_complete_through_http(launch, live_server, capsys):
    version = launch(static_only)
    call_command("study_bots", version.study.slug, n=50, base_url=live_server.url, policy="accuracy:0.7",
                 concurrency=5, seed=1)
    out = capsys.readouterr().out
    print(out)
    assert "50 completion redirects (50 with the completion code)" in out
    assert Participant.objects.filter(status="completed", is_simulated=True).count() == 50
    pre_items = len(version.spec["instruments"]["pre_test"]["forms"]["A"])
    assert Response.objects.filter(phase="pre_test").count() == 50 * pre_items


@pytest.mark.django_db(transaction=True)
def test_a_bot_run_that_cannot_complete_fails_loudly(launch, live_server):
    version = launch(static_only)
    from studies.services import study_state_set

    study_state_set(slug=version.study.slug, state="paused")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not every bot completed"):
        call_command("study_bots", version.study.slug, n=2, base_url=live_server.url)

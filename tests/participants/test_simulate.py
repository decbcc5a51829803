"""Simulated learners through the real HTTP flow: the tutor's learner model recovers their planted state."""
import re

import pytest
from django.core.management import call_command

from participants.models import Participant


def tutor_and_static(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("tutor", "static")]
    for arm in data["arms"]:
        arm["limits"]["min_seconds"] = 0
        arm["limits"].pop("turns", None)
    data["allocation"]["block_size"] = 2


@pytest.mark.django_db(transaction=True)
def test_forty_simulated_learners_and_the_tutors_recovery_beats_chance(launch, live_server, capsys, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(tutor_and_static)
    call_command("study_simulate", version.study.slug, n=40, seed=1, base_url=live_server.url, concurrency=8)
    out = capsys.readouterr().out
    print(out)
    assert "40 completed" in out
    assert Participant.objects.filter(is_simulated=True, status="completed").count() == 40
    tutor = re.search(r"^tutor .*accuracy ([0-9.]+) over (\d+) concepts; balanced accuracy ([0-9.]+) \(chance 0.50\)",
                      out, re.M)
    assert tutor, out
    assert int(tutor.group(2)) == 20 * len(version.spec["concepts"])
    assert float(tutor.group(3)) > 0.5  # better than chance, whatever the share of known concepts
    assert re.search(r"^static .*\(no learner model in this arm\)", out, re.M)

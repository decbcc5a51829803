"""Allocation never drops an arm silently: an arm it would draw that cannot run here pauses the study, with an
audit row naming the arm and a red banner on the monitor, and nobody is sent to another arm."""
import pytest
from django.contrib.auth import get_user_model

from conftest import hex_pid
from participants import services
from participants.models import AllocationSequence, Participant
from studies.models import AuditEvent, Membership, StudyVersion

pytestmark = pytest.mark.django_db


def static_and_chat(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("static", "chat")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


@pytest.fixture
def live_with_chat(launch, fake_llm, settings):
    """Static and chat arms, launched where the scripted model answers; then the model goes away."""
    version = launch(static_and_chat)
    settings.SCRIPTED_LLM_URL = ""  # as on a web process started without any LLM_* setting
    return version


def test_an_arm_that_cannot_run_pauses_the_study_and_nobody_is_allocated(live_with_chat, enter):
    version = live_with_chat
    client, response = enter(version)
    assert response.status_code == 302
    consent = client.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"})
    assert consent.status_code == 403 and "closed for now" in consent.content.decode()
    version.refresh_from_db()
    assert version.state == StudyVersion.State.PAUSED and version.state_reason == "arm_unavailable"
    pause = AuditEvent.objects.get(action="study_pause")
    assert pause.actor == "system" and pause.actor_id is None
    assert pause.after["arm"] == "chat" and "no language model" in pause.after["why"]
    participant = Participant.objects.get(version=version)
    assert participant.arm == "" and participant.step == "consent" and participant.consented_at is None
    assert not AllocationSequence.objects.filter(version=version, total__gt=0).exists()  # no draw taken
    _, again = enter(version, pid="PID0000000000000000000002")  # new entries see the paused page
    assert again.status_code == 403 and Participant.objects.filter(version=version).count() == 1


def test_the_service_raises_an_allocation_error_and_the_pause_is_kept(live_with_chat):
    version = live_with_chat
    participant = services.participant_enter(slug=version.study.slug, pid=hex_pid("PIDSERVICE000000000000001"))
    with pytest.raises(services.ArmUnavailable, match="arm chat of") as raised:
        services.participant_consent(participant_id=participant.pk, accept=True)
    assert isinstance(raised.value, services.AllocationError)
    assert StudyVersion.objects.get(pk=version.pk).state == StudyVersion.State.PAUSED
    assert Participant.objects.filter(version=version).exclude(arm="").count() == 0


def test_with_the_model_back_the_study_resumes_and_allocates_both_arms(live_with_chat, settings, fake_llm):
    version = live_with_chat
    first = services.participant_enter(slug=version.study.slug, pid=hex_pid("PIDRESUME0000000000000001"))
    with pytest.raises(services.ArmUnavailable):
        services.participant_consent(participant_id=first.pk, accept=True)
    settings.SCRIPTED_LLM_URL = fake_llm.url
    from studies.services import study_state_set

    study_state_set(slug=version.study.slug, state=StudyVersion.State.LIVE)
    arms = [services.participant_consent(participant_id=first.pk, accept=True).arm]
    second = services.participant_enter(slug=version.study.slug, pid=hex_pid("PIDRESUME0000000000000002"))
    arms.append(services.participant_consent(participant_id=second.pk, accept=True).arm)
    assert sorted(arms) == ["chat", "static"]  # a block of two holds both arms


def test_the_monitor_shows_a_red_banner_naming_the_arm(live_with_chat):
    version = live_with_chat
    participant = services.participant_enter(slug=version.study.slug, pid=hex_pid("PIDMONITOR000000000000001"))
    with pytest.raises(services.ArmUnavailable):
        services.participant_consent(participant_id=participant.pk, accept=True)
    from django.test import Client

    user = get_user_model().objects.create_user("vic")
    Membership.objects.create(study=version.study, user=user, role=Membership.Role.VIEWER)
    client = Client()
    client.force_login(user)
    html = client.get(f"/console/{version.study.slug}/monitor/").content.decode()
    assert 'class="banner error"' in html and 'data-monitor-warning="arm_unavailable_pause" data-arm="chat"' in html
    assert "arm chat cannot run here" in html


def test_an_arm_of_a_kind_the_platform_cannot_run_is_still_an_allocation_error(launch, fake_llm):
    version = launch(static_and_chat)
    spec = version.spec
    spec["arms"][1]["kind"] = "hologram"
    StudyVersion.objects.filter(pk=version.pk).update(spec=spec)
    participant = services.participant_enter(slug=version.study.slug, pid=hex_pid("PIDKIND00000000000000001"))
    with pytest.raises(services.AllocationError, match="kind this platform cannot run") as raised:
        services.participant_consent(participant_id=participant.pk, accept=True)
    assert not isinstance(raised.value, services.ArmUnavailable)
    assert StudyVersion.objects.get(pk=version.pk).state == StudyVersion.State.LIVE

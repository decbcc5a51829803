"""Entry hardening: seats only for real people (valid PIDs, a seat only after consent and a first answer, entry
limits per address and recruiter session), no takeover by PID (resume needs the same browser or the same
SESSION_ID; a one-time link moves a run to another device) and pilot links tied to their version, expiring."""
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory
from django.utils import timezone

from conftest import chat_only, static_only
from explainers.models import Turn
from participants import services
from participants.models import Participant, Response, ResumeLink, Step
from participants.selectors import study_budget_state
from participants.views import _client_ip
from studies.models import Membership
from studies.selectors import entry_link_issue, entry_link_token
from studies.services import study_launch, study_version_create
from studies.spec import StudyFileInvalid, study_file_read

pytestmark = pytest.mark.django_db


def new_pid() -> str:
    return uuid.uuid4().hex[:24]


def capped(data, cap: int = 2) -> None:
    """The static arm only, with a cap of `cap` completers."""
    static_only(data)
    data["arms"][0]["budget"] = {"max_completers": cap}


def arrive(version, pid: str, *, session: str | None = None, client: Client | None = None, **extra):
    client = client or Client()
    query = {"PROLIFIC_PID": pid, "STUDY_ID": "S1", **({"SESSION_ID": session} if session else {})}
    return client, client.get(f"/s/{version.study.slug}/", query, **extra)


def consent(client, version):
    return client.post(f"/s/{version.study.slug}/consent/", {"choice": "accept"})


def pid_row_exists(pid: str) -> bool:
    return Participant.objects.filter(pid_hash=services.identifier_hash(pid)).exists()


# --- seats only for real people ------------------------------------------------------------------------


def test_ten_fabricated_pids_take_no_seat_and_real_participants_still_enter(launch, step_through):
    version = launch(capped)
    for n in range(10):  # twenty requests: five only open the link, five consent too; none answers
        client, response = arrive(version, new_pid(), session=f"fake-{n}")
        assert response.status_code == 302
        if n % 2:
            assert consent(client, version).status_code == 303
    assert Participant.objects.filter(version=version).count() == 10
    assert study_budget_state(version=version)["arms"][0]["seats_used"] == 0

    for n in range(2):  # the real participants: consent and answer
        client, response = arrive(version, new_pid(), session=f"real-{n}")
        assert response.status_code == 302
        assert consent(client, version).status_code == 303
        assert step_through(client, version).status_code == 303
    state = study_budget_state(version=version)["arms"][0]
    assert state["seats_used"] == 2 and state["open"] is False
    _, refused = arrive(version, new_pid(), session="one-too-many")
    assert refused.status_code == 403 and "closed for now" in refused.content.decode()


def test_an_arm_that_filled_up_between_consent_and_the_first_answer_stores_nothing_and_says_so(launch, step_through):
    version = launch(lambda d: capped(d, cap=1))
    first, _ = arrive(version, new_pid(), session="first")
    second, _ = arrive(version, new_pid(), session="second")
    assert consent(first, version).status_code == 303
    assert consent(second, version).status_code == 303  # nobody holds a seat yet: both are allocated
    assert step_through(first, version).status_code == 303  # the first answer takes the only seat
    late = step_through(second, version)
    assert late.status_code == 403 and "just filled up" in late.content.decode()
    stuck = Participant.objects.get(token=second.session[f"teachback:participant:{version.study.slug}"])
    assert stuck.step == Step.PRE_TEST and not Response.objects.filter(participant=stuck).exists()
    assert study_budget_state(version=version)["arms"][0]["seats_used"] == 1


@pytest.mark.parametrize("pid", [
    "p1", "PID0000000000000000000001", "5f1a2b3c4d5e6f7a8b9c0d1", "5f1a2b3c4d5e6f7a8b9c0d1e0",
    "5f1a2b3c4d5e6f7a8b9c0d1g", "5f1a2b3c4d5e 6f7a8b9c0d1e", "<script>alert(1)</script>",
])
def test_an_invalid_pid_gets_a_polite_page_and_no_participant_row(live_study, pid):
    _, response = arrive(live_study, pid, session="S")
    assert response.status_code == 400
    assert "Please use your study link" in response.content.decode()
    assert Participant.objects.count() == 0


def test_a_custom_pid_pattern_admits_its_ids_and_refuses_others(launch):
    def other_recruiter(data):
        static_only(data)
        data["recruitment"]["pid_pattern"] = r"[A-Z]{3}-\d{4}"

    version = launch(other_recruiter)
    assert version.spec["recruitment"]["pid_pattern"] == r"[A-Z]{3}-\d{4}"
    assert arrive(version, "ABC-1234", session="S")[1].status_code == 302
    assert pid_row_exists("ABC-1234")
    assert arrive(version, new_pid(), session="T")[1].status_code == 400  # a Prolific id is not one of these
    assert arrive(version, "ABC-12345", session="U")[1].status_code == 400  # the whole id must match
    assert Participant.objects.count() == 1


def test_a_pid_pattern_that_is_not_a_regular_expression_is_refused_with_its_line(study_folder):
    folder = study_folder(lambda data: data["recruitment"].__setitem__("pid_pattern", "([0-9a-f]{24}"))
    text = (folder / "study.yaml").read_text()
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if "pid_pattern" in row)
    with pytest.raises(StudyFileInvalid) as invalid:
        study_file_read(folder)
    (error,) = [e for e in invalid.value.errors if "pid_pattern" in e.path]
    assert error.line == line and "not a valid regular expression" in error.message


def test_pilot_and_simulated_links_accept_any_pid(live_study):
    slug = live_study.study.slug
    token = entry_link_token(slug=slug, kind="simulated")
    response = Client().get(f"/s/{slug}/", {"PROLIFIC_PID": f"bot-{uuid.uuid4().hex}", "sim": token})
    assert response.status_code == 302 and Participant.objects.get().is_simulated


# --- entry limits --------------------------------------------------------------------------------------------


def test_entry_over_the_per_address_limit_gets_429_and_no_row_and_resumes_are_not_counted(live_study, settings):
    settings.ENTRY_RATE_PER_IP, settings.ENTRY_RATE_PER_SESSION = 3, 0
    address = {"REMOTE_ADDR": f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"}  # counters outlive tests
    clients = [arrive(live_study, new_pid(), session=f"s{n}", **address) for n in range(3)]
    assert [response.status_code for _, response in clients] == [302, 302, 302]
    first, _ = clients[0]
    for _ in range(5):  # the same browser coming back (a reload, tomorrow) is not a new arrival
        assert first.get(f"/s/{live_study.study.slug}/", **address).status_code == 302
    pid = new_pid()
    _, refused = arrive(live_study, pid, session="s3", **address)
    assert refused.status_code == 429 and refused["Retry-After"] == str(settings.ENTRY_RATE_WINDOW_S)
    assert "Please wait" in refused.content.decode()
    assert not pid_row_exists(pid) and Participant.objects.count() == 3
    other = {"REMOTE_ADDR": f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"}
    assert arrive(live_study, pid, session="s3", **other)[1].status_code == 302  # another address gets in


def test_entry_over_the_per_session_limit_gets_429(live_study, settings):
    settings.ENTRY_RATE_PER_IP, settings.ENTRY_RATE_PER_SESSION = 0, 2
    session = f"replayed-{uuid.uuid4().hex}"
    codes = [arrive(live_study, new_pid(), session=session)[1].status_code for _ in range(3)]
    assert codes == [302, 302, 429]
    assert Participant.objects.count() == 2


def test_the_client_address_comes_from_the_proxy_header_only_when_a_setting_says_so(settings):
    request = RequestFactory().get("/s/x/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    settings.CLIENT_IP_HEADER = ""
    assert _client_ip(request) == "10.0.0.2"  # a header anyone can send is not believed by default
    settings.CLIENT_IP_HEADER = "X-Forwarded-For"
    assert _client_ip(request) == "203.0.113.7"  # the address the trusted proxy appended, not the client's claim
    settings.CLIENT_IP_HEADER = "X-Real-IP"
    assert _client_ip(RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_REAL_IP="198.51.100.4")) == "198.51.100.4"


# --- no takeover by PID ----------------------------------------------------------------------------------


@pytest.fixture
def in_chat(launch, fake_llm, step_through):
    """Participant A in the chat arm, who has sent a message (its reply is not needed here)."""
    version = launch(chat_only)
    pid = new_pid()
    client, _ = arrive(version, pid, session="A-session")
    step_through(client, version, times=1 + 5)
    sent = client.post(f"/s/{version.study.slug}/chat/send/", {"text": "my secret about zebras"})
    assert sent.status_code == 202
    page = client.get(f"/s/{version.study.slug}/explanation/").content.decode()
    assert "my secret about zebras" in page
    return version, pid, client


def test_a_second_browser_with_only_the_pid_cannot_read_the_chat_nor_send(in_chat):
    version, pid, _ = in_chat
    slug = version.study.slug
    turns = Turn.objects.count()
    for session in (None, "another-session"):
        other, response = arrive(version, pid, session=session)
        assert response.status_code == 409
        assert "already in progress in another browser" in response.content.decode()
        assert "Continue on another device" in response.content.decode()
        for url in (f"/s/{slug}/explanation/", f"/s/{slug}/", f"/s/{slug}/consent/"):
            page = other.get(url, follow=True)
            assert "my secret about zebras" not in page.content.decode()
        assert other.get(f"/s/{slug}/explanation/").status_code == 403
        sent = other.post(f"/s/{slug}/chat/send/", {"text": "sent as A"})
        assert sent.status_code == 403
    assert Turn.objects.count() == turns and not Turn.objects.filter(text="sent as A").exists()


def test_the_same_recruiter_session_resumes_in_another_browser(in_chat):
    version, pid, _ = in_chat
    other, response = arrive(version, pid, session="A-session")  # Prolific's own re-open
    assert response.status_code == 302 and response["Location"] == f"/s/{version.study.slug}/explanation/"
    assert "my secret about zebras" in other.get(response["Location"]).content.decode()


def test_a_reload_a_double_click_and_tomorrow_in_the_same_browser_land_where_they_were(in_chat):
    version, pid, client = in_chat
    slug = version.study.slug
    for query in ({}, {"PROLIFIC_PID": pid}, {"PROLIFIC_PID": pid, "SESSION_ID": "a-new-session"}):
        response = client.get(f"/s/{slug}/", query)
        assert response.status_code == 302 and response["Location"] == f"/s/{slug}/explanation/"


def test_the_one_time_resume_link_moves_the_run_once_and_then_works_no_more(in_chat):
    version, _, old = in_chat
    slug = version.study.slug
    offer = old.get(f"/s/{slug}/device/")
    assert offer.status_code == 200 and "Get the link" in offer.content.decode()
    assert f'href="/s/{slug}/device/"' in old.get(f"/s/{slug}/explanation/").content.decode()  # in the footer
    issued = old.post(f"/s/{slug}/device/").content.decode()
    link = re.search(r'value="(http://testserver/s/[^"]+)" id="resume-link"', issued).group(1)
    token = link.split("resume=")[1]
    stored = ResumeLink.objects.get()
    assert token not in stored.token_hash and stored.used_at is None  # stored hashed

    new = Client()
    moved = new.get(link)
    assert moved.status_code == 302 and moved["Location"] == f"/s/{slug}/explanation/"
    assert "my secret about zebras" in new.get(moved["Location"]).content.decode()
    assert old.get(f"/s/{slug}/explanation/").status_code == 403  # the run has moved
    again = Client().get(link)
    assert again.status_code == 410 and "no longer works" in again.content.decode()
    assert ResumeLink.objects.get().used_at is not None


def test_an_expired_resume_link_does_not_work(in_chat):
    version, _, old = in_chat
    slug = version.study.slug
    issued = old.post(f"/s/{slug}/device/").content.decode()
    link = re.search(r'value="(http://testserver/s/[^"]+)" id="resume-link"', issued).group(1)
    ResumeLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client().get(link).status_code == 410
    assert old.get(f"/s/{slug}/explanation/").status_code == 200  # nothing moved


# --- pilot links ----------------------------------------------------------------------------------------


def test_a_pilot_link_of_a_previous_version_or_past_its_expiry_is_refused(launch, study_folder):
    first = launch(static_only)
    slug = first.study.slug
    old = entry_link_token(slug=slug, kind="pilot")
    assert Client().get(f"/s/{slug}/", {"pilot": old}).status_code == 302
    expired = entry_link_issue(slug=slug, kind="pilot", days=-1).token
    response = Client().get(f"/s/{slug}/", {"pilot": expired})
    assert response.status_code == 410 and "has expired" in response.content.decode()

    def changed(data):
        static_only(data)
        data["title"] = "A second version"

    draft, _ = study_version_create(study_file=study_file_read(study_folder(changed, name="second")))
    second = study_launch(slug=slug, number=draft.number)
    assert second.study_id == first.study_id and second.number == first.number + 1
    response = Client().get(f"/s/{slug}/", {"pilot": old})
    assert response.status_code == 410 and "earlier version" in response.content.decode()
    assert Client().get(f"/s/{slug}/", {"pilot": entry_link_token(slug=slug, kind="pilot")}).status_code == 302
    assert Participant.objects.filter(is_pilot=True).count() == 2


def test_the_console_shows_the_pilot_link_of_the_current_version_and_when_it_expires(live_study, settings):
    settings.PILOT_LINK_DAYS = 3
    user = get_user_model().objects.create_user("pilot-owner")
    Membership.objects.create(study=live_study.study, user=user, role=Membership.Role.OWNER)
    client = Client()
    client.force_login(user)
    html = client.get(f"/console/{live_study.study.slug}/").content.decode()
    expires = (timezone.now() + timedelta(days=3)).strftime("%-d %b %Y")
    hint = re.search(r"<div class=\"hint\" data-pilot-expires>(.*?)</div>", html, re.S).group(1)
    assert f"version {live_study.number} only" in hint and expires in hint
    link = re.search(r'value="([^"]+)" id="pilot-link"', html).group(1).replace("&amp;", "&")
    assert Client().get(link).status_code == 302

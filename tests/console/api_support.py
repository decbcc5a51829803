"""Helpers for the API tests: a launched study with one researcher per role, tokens, throttles off."""
import json
import re
from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator

from console.models import Job
from console.services import api_token_create
from participants.models import Participant
from studies.models import Membership, Study

ROLES = ("viewer", "analyst", "editor", "owner")
UNSAFE = ("post", "put", "patch", "delete")
NAMESPACES = ("console", "api")


@pytest.fixture
def no_throttles(settings):
    """Lift the API rate limits (the cache keeps counters across tests in one run) and forget old counters."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {"token": None, "user": None, "anon": None}}
    cache.clear()


def make_user(username: str, study=None, role: str | None = None):
    user = get_user_model().objects.create_user(username, password="a-long-test-password-42")
    if study is not None and role:
        Membership.objects.create(study=study, user=user, role=role)
    return user


def session_client(user, raise_request_exception: bool = True) -> Client:
    client = Client(raise_request_exception=raise_request_exception)
    if user is not None:
        client.force_login(user)
    return client


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def token_for(user, scope: str = "write") -> str:
    return api_token_create(user=user, name=f"{scope} token", scope=scope)[1]


class Api:
    """A tiny client for the API with a bearer token: JSON in, (status, JSON or bytes) out."""

    def __init__(self, key: str | None = None, client: Client | None = None):
        self.client = client or Client()
        self.headers = bearer(key) if key else {}

    def call(self, method: str, path: str, data=None, **extra):
        kwargs = {**self.headers, **extra}
        if method == "get":
            response = self.client.get(path, data or {}, **kwargs)
        elif "format" in kwargs and kwargs.pop("format") == "multipart":
            response = getattr(self.client, method)(path, data or {}, **kwargs)
        else:
            response = getattr(self.client, method)(path, json.dumps(data or {}), content_type="application/json",
                                                    **kwargs)
        ctype = response.headers.get("Content-Type", "")
        body = response.json() if ctype.startswith("application/json") and response.content else response.content
        return response.status_code, body

    def get(self, path, data=None, **extra):
        return self.call("get", path, data, **extra)

    def post(self, path, data=None, **extra):
        return self.call("post", path, data, **extra)

    def delete(self, path, **extra):
        return self.call("delete", path, **extra)


@dataclass
class World:
    """The example study, live, with a researcher per role, an outsider (owner of another study only)."""

    study: Study
    version: object
    users: dict = field(default_factory=dict)  # role or "outsider" -> user

    def participant(self, enter, n: int = [0]) -> Participant:  # noqa: B006 - a counter shared by the calls
        n[0] += 1
        enter(self.version, pid=f"PIDMATRIX{n[0]:016d}")
        return Participant.objects.order_by("-id").first()


@pytest.fixture
def world(live_study):
    study = live_study.study
    users = {role: make_user(role, study, role) for role in ROLES}
    other = Study.objects.create(slug="someone-elses", title="Another study")
    users["outsider"] = make_user("outsider", other, "owner")
    return World(study=study, version=live_study, users=users)


# --- what the researcher side serves (for the access matrix and the CSRF test) --------------------


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def researcher_routes() -> list[tuple[str, str, URLPattern]]:
    """Every route of the console's two URL modules: (namespace, route, pattern)."""
    routes = []
    for top in get_resolver().url_patterns:
        for sub in getattr(top, "url_patterns", []):
            if isinstance(sub, URLResolver) and sub.namespace in NAMESPACES:
                for route, pattern in _walk(sub.url_patterns, str(top.pattern) + str(sub.pattern)):
                    routes.append((sub.namespace, route, pattern))
    return routes


def view_needs(func) -> str | None:
    view_class = getattr(func, "view_class", None)
    return getattr(func, "needs", None) or getattr(view_class, "needs", None) or None


def api_operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(path, method) for path, ops in schema["paths"].items() for method in ops
            if method in ("get", "post", "put", "patch", "delete")]


class Fill:
    """Values for the URL kwargs, made fresh where the call uses one up (erase, revoke, remove)."""

    def __init__(self, w, enter):
        self.w, self.enter = w, enter
        self.reader = w.participant(enter)
        done = dict(state=Job.State.DONE, progress=100, content=b"x", size=1, filename="f", content_type="text/plain")
        self.jobs = {kind: Job.objects.create(study=w.study, kind=kind, **done) for kind in Job.Kind.values}

    def value(self, name: str, route: str, method: str, user):
        if name == "slug":
            return self.w.study.slug
        if name == "pseudonym":
            return (self.w.participant(self.enter) if method in UNSAFE else self.reader).pseudonym
        if name == "job_id":
            kind = Job.Kind.REPORT if "report" in route else Job.Kind.EXPORT
            return self.jobs[kind].pk
        if name == "token_id":
            owner = user or self.w.users["owner"]
            return api_token_create(user=owner, name="to revoke", scope="read")[0].pk
        if name == "username":
            spare = make_user(f"spare{Membership.objects.count()}", self.w.study, "viewer")
            return spare.username
        if name == "run":  # a bots run, queued (the test's transaction never commits: nothing is sent)
            from console.bots import bots_run_start

            return bots_run_start(actor=self.w.users["owner"], study=self.w.study, base_url="http://testserver")["run"]
        raise AssertionError(f"the access matrix has no value for the URL kwarg {name!r} in {route}: add one in Fill")

    def url(self, route: str, method: str, user) -> str:
        def sub(match):
            return str(self.value(match.group("name"), route, method, user))

        url = re.sub(r"<(?:\w+:)?(?P<name>\w+)>", sub, route)
        url = re.sub(r"\{(?P<name>\w+)\}", sub, url)
        return url if url.startswith("/") else "/" + url


def chat_history(participant, *, turns: int = 2) -> None:
    """Give a participant a conversation as the tutor arm leaves it: turns, LLM calls, learner-model snapshots."""
    from decimal import Decimal

    from django.utils import timezone

    from explainers.models import Conversation, LearnerModelSnapshot, LLMCall, Turn

    version = participant.version
    conversation = Conversation.objects.create(version=version, version_sha256=version.sha256,
                                               arm=participant.arm or "a")
    participant.conversation = conversation
    participant.save(update_fields=["conversation"])
    state = {"schema_version": 1, "concepts": {"debt": {"mastery": 0.2, "evidence": []},
                                               "income": {"mastery": 0.5, "evidence": []}},
             "misconceptions": ["income matters most"], "background": "",
             "next_goal": {"concept": "debt", "act": "explain"}, "why": "from the pre-test"}
    LearnerModelSnapshot.objects.create(conversation=conversation, index=0, source="pretest", schema_version=1,
                                        state=state)
    opening = Turn.objects.create(conversation=conversation, author="explainer", text="Hello", status="complete",
                                  act="explain", concept="debt")
    previous = opening
    for i in range(turns):
        asked = Turn.objects.create(conversation=conversation, author="participant", text=f"question {i}",
                                    status="answered", answers_check=previous if i else None,
                                    check_correct=True if i else None)
        Turn.objects.create(conversation=conversation, author="explainer", text=f"answer {i}", status="complete",
                            reply_to=asked, act="check", concept="debt", check_item="pre_a1",
                            tool_calls=[{"name": "predict", "arguments": {"debt_ratio": 0.3}, "result": "approve"}])
        for attempt in (1, 2):
            LLMCall.objects.create(
                turn=asked, purpose="reply", attempt=attempt, status="error" if attempt == 1 else "ok",
                provider="openai", model="fake", request={"messages": []}, started_at=timezone.now(), ttft_ms=120,
                latency_ms=900, input_tokens=300, output_tokens=40, cost_usd=Decimal("0.000123"),
                error_kind="rate_limited" if attempt == 1 else "", http_status=429 if attempt == 1 else 200,
                version_sha256=version.sha256,
            )
        state = {**state, "concepts": {**state["concepts"], "debt": {"mastery": round(0.2 + 0.3 * (i + 1), 3),
                                                                    "evidence": [f"turn {i}"]}},
                 "misconceptions": [] if i else state["misconceptions"],
                 "next_goal": {"concept": "income", "act": "check"} if i else state["next_goal"], "why": f"turn {i}"}
        LearnerModelSnapshot.objects.create(conversation=conversation, index=i + 1, turn=asked, source="rules",
                                            schema_version=1, state=state)
        previous = asked

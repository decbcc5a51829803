"""Bots: scripted participants that go through the real HTTP flow, for smoke runs and tests."""
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from studies.protocol import Protocol
from studies.scoring import item_key

MAX_PAGES = 300


@dataclass
class BotResult:
    completed: bool = False
    finish_url: str = ""
    pages: int = 0
    error: str = ""
    visited: list[str] = field(default_factory=list)


class _Page(HTMLParser):
    """Collect what a bot needs from a participant page: its kind, the form's hidden fields and choices."""

    def __init__(self):
        super().__init__()
        self.kind = ""
        self.hidden: dict[str, str] = {}
        self.wait = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.kind = a.get("data-page", "")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.hidden[a["name"]] = a.get("value") or ""
        elif tag == "button" and a.get("data-wait"):
            self.wait = int(a["data-wait"] or 0)


def page_parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


class AnswerPolicy:
    """Answer items: `random`, `key` (always right) or `accuracy:P` (right with probability P)."""

    def __init__(self, spec: str, protocol: Protocol, target_keys: dict, rng: random.Random):
        self.protocol, self.target_keys, self.rng = protocol, target_keys, rng
        name, _, arg = spec.partition(":")
        if name not in ("random", "key", "accuracy") or (name == "accuracy" and not re.fullmatch(r"0?\.\d+|1(\.0*)?|0", arg)):
            raise ValueError(f"unknown answer policy {spec!r}: use random, key or accuracy:P")
        self.p_right = {"random": None, "key": 1.0}.get(name, float(arg) if arg else None)

    def answer(self, item_id: str) -> dict:
        item = self.protocol.items[item_id]
        key = item_key(item, self.target_keys)
        options = [o["id"] for o in item.get("options") or []]
        right = key is not None and self.p_right is not None and self.rng.random() < self.p_right
        kind = item["kind"]
        data: dict = {}
        if kind == "multi_choice":
            wrong = [o for o in options if o not in key] or options
            data["answer"] = list(key) if right else self.rng.sample(options, self.rng.randint(1, len(options))) if self.p_right is None else [self.rng.choice(wrong)]
        elif options:
            wrong = [o for o in options if o != key] or options
            data["answer"] = key if right else (self.rng.choice(options) if self.p_right is None else self.rng.choice(wrong))
        elif kind == "likert":
            data["answer"] = str(self.rng.randint(item["scale"]["min"], item["scale"]["max"]))
        elif kind == "text":
            data["answer"] = "An answer from a simulated participant."
        else:  # numeric, or predict on a regressor
            base = float(key) if key is not None else 0.0
            tolerance = float(item.get("tolerance") or 0)
            data["answer"] = str(base if right else base + (tolerance + 1) * self.rng.choice([-3, -2, 2, 3]))
        if item.get("confidence"):
            data["confidence"] = str(self.rng.randint(40, 100))
        return data


def bot_run(*, base_url: str, slug: str, policy, link_token: str, pid: str | None = None) -> BotResult:
    """Walk one participant from the study link to the recruiter's completion URL.

    `policy.answer(item_id)` answers items; an optional `policy.converse(client, slug, csrf)` chats on
    the explanation page before the participant continues.
    """
    result = BotResult()
    pid = pid or f"bot-{uuid.uuid4().hex}"
    origin = urlsplit(base_url).netloc
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=60) as client:
        url = f"/s/{slug}/?PROLIFIC_PID={pid}&STUDY_ID=bots&SESSION_ID={uuid.uuid4().hex}&sim={link_token}"
        response = client.get(url)
        while result.pages < MAX_PAGES:
            result.pages += 1
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if urlsplit(target).netloc != origin:
                    result.completed, result.finish_url = True, target
                    return result
                response = client.get(target)
                continue
            if response.status_code not in (200, 400):
                result.error = f"HTTP {response.status_code} at {response.url.path}"
                return result
            page = page_parse(response.text)
            result.visited.append(page.kind)
            data = {"csrfmiddlewaretoken": page.hidden.get("csrfmiddlewaretoken", "")}
            if page.kind == "consent":
                data["choice"] = "accept"
            elif page.kind == "item":
                data["item"] = page.hidden["item"]
                data.update(policy.answer(page.hidden["item"]))
            elif page.kind == "explanation":
                converse = getattr(policy, "converse", None)
                if converse is not None and "data-chat" in response.text:
                    converse(client, slug, data["csrfmiddlewaretoken"])
                    response = client.get(response.url.path)
                    page = page_parse(response.text)
                    data["csrfmiddlewaretoken"] = page.hidden.get("csrfmiddlewaretoken", "")
                if page.wait:  # the server enforces the arm's minimum reading time
                    time.sleep(page.wait + 0.2)
            elif page.kind == "debrief":
                pass
            else:
                result.error = f"stopped on a {page.kind or 'unknown'} page at {response.url.path}"
                return result
            data["client_events"] = '{"visibility_changes": 0, "paste_count": 0}'
            response = client.post(response.url.path, data=data)
    result.error = "too many pages"
    return result

"""Bots: scripted participants that go through the real HTTP flow, for smoke runs and tests."""
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx2

from studies.protocol import Protocol
from studies.scoring import item_key

MAX_PAGES = 300
REPLY_TIMEOUT_S = 120.0  # how long a bot waits for one reply before it moves on (the report counts it)
BOT_QUESTIONS = ("What matters most to the model?", "Why would an applicant be refused?", "Does income matter?")


@dataclass
class ChatSeen:
    """What the explanation page showed of the chat when the bot left it (all a remote run can know)."""

    sent: int = 0        # participant turns on the page
    answered: int = 0
    failed: int = 0
    cut_off: int = 0     # failed, with the part of the reply that was shown kept on the page
    pending: int = 0
    replies: int = 0     # explainer turns on the page
    scripted: bool = False  # the page said the replies come from the scripted demo model
    opening_failed: bool = False  # the explainer was to speak first and could not


@dataclass
class BotResult:
    completed: bool = False
    finish_url: str = ""
    pages: int = 0
    error: str = ""
    visited: list[str] = field(default_factory=list)
    pid: str = ""
    chat: ChatSeen | None = None


class _Page(HTMLParser):
    """Collect what a bot needs from a participant page: its kind, the form's hidden fields and choices."""

    def __init__(self):
        super().__init__()
        self.kind = ""
        self.hidden: dict[str, str] = {}
        self.wait = 0
        self.chat: ChatSeen | None = None
        self.turns: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.kind = a.get("data-page", "")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.hidden[a["name"]] = a.get("value") or ""
        elif tag == "button" and a.get("data-wait"):
            self.wait = int(a["data-wait"] or 0)
        elif tag == "section" and "data-chat" in a:
            self.chat = ChatSeen()
        elif tag == "p" and "data-scripted" in a and self.chat is not None:
            self.chat.scripted = True
        elif tag == "li" and self.chat is not None and ("data-turn" in a or "data-reply-to" in a):
            self.turns.append(a)

    def close(self):
        super().close()
        if self.chat is not None:
            self._count_chat()

    def _count_chat(self) -> None:
        """Count the transcript's turns: a participant turn's status, and a failed reply shown in its place
        (`data-reply-to`, with `data-cut-off` when part of it was shown), or a failed opening."""
        chat = self.chat
        cut = {a.get("data-reply-to") for a in self.turns if "data-cut-off" in a and a.get("data-reply-to")}
        for a in self.turns:
            classes = (a.get("class") or "").split()
            status = a.get("data-status") or ""
            if "participant" in classes:
                chat.sent += 1
                if status == "failed" and a.get("data-turn") in cut:
                    chat.cut_off += 1
                elif status in ("answered", "failed", "pending"):
                    setattr(chat, status, getattr(chat, status) + 1)
            elif "explainer" in classes and "data-turn" in a:
                chat.replies += 1
            elif "data-opening" in a:
                chat.opening_failed = True


def page_parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def chat_wait(client: httpx2.Client, page_url: str, timeout_s: float = REPLY_TIMEOUT_S) -> str:
    """Return the explanation page once no reply (or opening) is being written, or when the time is up."""
    deadline = time.monotonic() + timeout_s
    page = client.get(page_url).text
    while time.monotonic() < deadline and 'data-pending=""' not in page:
        time.sleep(0.1)
        page = client.get(page_url).text
    return page


class AnswerPolicy:
    """Answer items: `random`, `key` (always right) or `accuracy:P` (right with probability P)."""

    def __init__(self, spec: str, protocol: Protocol, target_keys: dict, rng: random.Random, *,
                 chat_turns: int = 0, reply_timeout_s: float = REPLY_TIMEOUT_S):
        self.protocol, self.target_keys, self.rng = protocol, target_keys, rng
        self.chat_turns, self.reply_timeout_s = chat_turns, reply_timeout_s
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

    def converse(self, client: httpx2.Client, slug: str, csrf: str) -> None:
        """Send `chat_turns` questions, each after the previous reply (or opening) is written or given up."""
        page_url = f"/s/{slug}/explanation/"
        for n in range(self.chat_turns):
            chat_wait(client, page_url, self.reply_timeout_s)
            sent = client.post(f"/s/{slug}/chat/send/", data={"text": BOT_QUESTIONS[n % len(BOT_QUESTIONS)]},
                               headers={"X-CSRFToken": csrf})
            if sent.status_code != 202:  # a limit, or a reply still being written: the report counts it
                return
        if self.chat_turns:
            chat_wait(client, page_url, self.reply_timeout_s)


def bot_run(*, base_url: str, slug: str, policy, link_token: str, pid: str | None = None) -> BotResult:
    """Walk one participant from the study link to the recruiter's completion URL.

    `policy.answer(item_id)` answers items; an optional `policy.converse(client, slug, csrf)` chats on
    the explanation page before the participant continues.
    """
    pid = pid or f"bot-{uuid.uuid4().hex}"
    result = BotResult(pid=pid)
    origin = urlsplit(base_url).netloc
    with httpx2.Client(base_url=base_url, follow_redirects=False, timeout=60) as client:
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
                result.chat = page.chat or result.chat
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

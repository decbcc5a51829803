"""Simulated learners: personas with a planted per-concept knowledge state that go through the real
HTTP flow (entry, consent, pre-test, explanation with chat, post-test), answer items from their state,
and learn from what the explainer addresses.

The learning rule is an assumption of the simulation, stated here so a reader can judge the figures:
an unknown concept becomes known with probability `LEARN_ADDRESSED` each time an explainer turn
addresses it (explains, corrects, gives an example: recognised by the concept's label in the turn),
and with probability `LEARN_READING` once for a participant who reads static material or chats
without targeted teaching.
"""
import html
import random
import re
from dataclasses import dataclass, field

from studies.protocol import Protocol
from studies.scoring import item_key

from .bots import REPLY_TIMEOUT_S, chat_wait

LEARN_ADDRESSED = 0.3
LEARN_READING = 0.15
SLIP = 0.1
MAX_CHAT_TURNS = 40
CHAT_QUESTIONS = ("What matters most to the model?", "Does income matter?", "Why would an applicant be refused?")

# a written explainer turn (a failed or cut-off reply shows as an explainer item without `data-turn`)
_BUBBLE = re.compile(r'<li class="turn explainer" data-turn="\d+"[^>]*>(.*?)</li>', re.S)
_MINE = re.compile(r'<li class="turn participant" data-turn="\d+" data-status="(\w+)"')
FAILED_IN_A_ROW_MAX = 3  # a learner whose messages keep failing gives up on the chat (the report counts them)
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Persona:
    """One simulated learner: what they know, how they slip, and what they learned."""

    protocol: Protocol
    target_keys: dict
    rng: random.Random
    knows: dict[str, bool]
    slip: float = SLIP
    knows_after: dict[str, bool] = field(default_factory=dict)
    addressed: list[str] = field(default_factory=list)
    reply_timeout_s: float = REPLY_TIMEOUT_S

    @classmethod
    def planted(cls, protocol: Protocol, target_keys: dict, rng: random.Random, p_know: float = 0.5) -> "Persona":
        knows = {c["id"]: rng.random() < p_know for c in protocol.spec["concepts"]}
        return cls(protocol=protocol, target_keys=target_keys, rng=rng, knows=knows, knows_after=dict(knows))

    def _knows(self, concept: str | None) -> bool:
        return bool(concept) and self.knows_after.get(concept, False)

    def answer(self, item_id: str) -> dict:
        item = self.protocol.items[item_id]
        key = item_key(item, self.target_keys)
        right = key is not None and self._knows(item.get("concept")) and self.rng.random() > self.slip
        options = [o["id"] for o in item.get("options") or []]
        data: dict = {}
        if item["kind"] == "multi_choice":
            data["answer"] = list(key) if right else [self.rng.choice(options)]
        elif options:
            data["answer"] = key if right else self.rng.choice(options)
        elif item["kind"] == "likert":
            data["answer"] = str(self.rng.randint(item["scale"]["min"], item["scale"]["max"]))
        elif item["kind"] == "text":
            data["answer"] = "(simulated learner)"
        else:
            base = float(key) if key is not None else 0.0
            data["answer"] = str(base if right else base + (float(item.get("tolerance") or 0) + 1) * 3)
        if item.get("confidence"):
            data["confidence"] = str(self.rng.randint(70, 95) if self._knows(item.get("concept")) else self.rng.randint(20, 60))
        return data

    # -- the explanation step ------------------------------------------------------------------

    def _learn(self, concept: str, p: float) -> None:
        if not self.knows_after[concept] and self.rng.random() < p:
            self.knows_after[concept] = True

    def _concept_in(self, text: str) -> str | None:
        for concept in self.protocol.spec["concepts"]:
            if self.protocol.text(concept["label"], "en") in text:
                return concept["id"]
        return None

    def _check_answer(self, text: str) -> str | None:
        """If the turn asks a practice question, return this learner's answer to it."""
        for item_id in self.protocol.spec["instruments"].get("practice", []):
            item = self.protocol.items[item_id]
            if self.protocol.text(item["prompt"], "en") in text:
                if self._knows(item["concept"]) and self.rng.random() > self.slip:
                    return item["key"]
                return self.rng.choice([o["id"] for o in item["options"]])
        return None

    def converse(self, client, slug: str, csrf: str) -> None:
        """Chat until the conversation ends or the learner has had enough, then let the flow continue.

        An explainer that speaks first (the tutor, the agentic arm) teaches: the learner answers its check
        questions from what they know and learns from the turns that address a concept. Otherwise (the chat
        arm, a passive agentic arm) the learner asks a couple of questions.
        """
        page_url = f"/s/{slug}/explanation/"
        page = self._wait_for_reply(client, page_url)  # an agentic opening is written by the worker
        if not _BUBBLE.findall(page):  # nobody spoke first: plain chat, no targeted teaching assumed
            for question in CHAT_QUESTIONS[: self.rng.randint(1, 2)]:
                client.post(f"/s/{slug}/chat/send/", data={"text": question}, headers={"X-CSRFToken": csrf})
                self._wait_for_reply(client, page_url)
            for concept in self.knows_after:
                self._learn(concept, LEARN_READING)
            return
        failed_in_a_row = 0
        for _ in range(MAX_CHAT_TURNS):
            if 'data-ended="1"' in page:
                return
            mine = _MINE.findall(page)
            failed_in_a_row = failed_in_a_row + 1 if mine and mine[-1] == "failed" else 0
            if failed_in_a_row >= FAILED_IN_A_ROW_MAX:
                return
            bubbles = _BUBBLE.findall(page)
            last = html.unescape(_TAG.sub("", bubbles[-1])) if bubbles else ""
            concept = self._concept_in(last)
            answer = self._check_answer(last)
            if answer is None and concept:
                self.addressed.append(concept)
                self._learn(concept, LEARN_ADDRESSED)
            response = client.post(f"/s/{slug}/chat/send/", data={"text": answer or "ok"}, headers={"X-CSRFToken": csrf})
            if response.status_code != 202:
                return
            page = self._wait_for_reply(client, page_url)

    def _wait_for_reply(self, client, page_url: str) -> str:
        """Return the explanation page once no reply (or opening) is being written, or when the time is up."""
        return chat_wait(client, page_url, self.reply_timeout_s)


def recovery(snapshot_state: dict, truth: dict[str, bool], threshold: float = 0.5) -> dict[str, int]:
    """Count how the learner model's known/unknown split matches the truth (confusion counts).

    Mastery is the model's probability that the concept is known: known when it is at least one half.
    """
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for concept, known in truth.items():
        if concept not in snapshot_state["concepts"]:
            continue
        said = snapshot_state["concepts"][concept]["mastery"] >= threshold
        counts[("t" if said == known else "f") + ("p" if said else "n")] += 1
    return counts


def recovery_summary(counts: list[dict[str, int]]) -> dict[str, float]:
    """Accuracy, balanced accuracy (chance: 0.5 whatever the share of known concepts) and the
    accuracy of always guessing the more common answer."""
    total = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "tn", "fn")}
    n = sum(total.values())
    known, unknown = total["tp"] + total["fn"], total["tn"] + total["fp"]
    sensitivity = total["tp"] / known if known else float("nan")
    specificity = total["tn"] / unknown if unknown else float("nan")
    return {
        "n": n,
        "accuracy": (total["tp"] + total["tn"]) / n if n else float("nan"),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "majority": max(known, unknown) / n if n else float("nan"),
    }

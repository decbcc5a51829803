"""The demo's scripted explainer: what the fake provider (explainers.fakellm) answers to the agentic arm's
prompts when no real language model is configured.

It reads only the request, as a real model would: the tagged sections of the agentic arm's system prompt
(`<learner_model>`, `<evidence>`, `<next_move>`, `<post_test>`, `<meeting_note_request/>`, `<concepts>`)
and the tool results. A learner-model update returns the model updated by the evidence (mastery up after
teaching and after a right answer, down after a wrong one); a reply makes the next move with the tutor's
own templates (explainers.learner.moves), calling the `predict` tool first for an example; post-test
predictions and the meeting note come from the learner model. Every text says it is scripted. No Django
settings are needed: the fake runs as a process of its own. It writes in the language the prompt asks for
(`Write in …`, explainers.arms.agentic): English, or Simplified Chinese from its own table of phrases.
"""
import json
import re

from explainers.learner.moves import (
    ANOTHER_WAY, ANSWER_AGAIN, ANSWER_WITH_LETTER, CHECK, CORRECTION, EXPLAIN, GO_ON, READY, RIGHT, SUMMARY,
    TEMPLATES, summary_text, taught_text,
)
from explainers.learner.play import TAUGHT_ACTS

# --------------------------------------------------------------------------- reading a request


def text_of(content) -> str:
    """The text of a message content (a string, or a list of OpenAI parts / Anthropic blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif part.get("type") == "tool_result":
                    out.append(text_of(part.get("content")))
    return "\n".join(out)


def last_user_text(messages) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""



def schema_instance(schema, root=None, depth: int = 0):
    """A minimal JSON instance of a JSON schema: required properties filled with plain defaults."""
    if not isinstance(schema, dict) or depth > 20:
        return None
    root = root if root is not None else schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return schema_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or options)[0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict = {}
        for part in schema["allOf"]:
            value = schema_instance(part, root, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: schema_instance(props.get(name, {}), root, depth + 1)
            for name in schema.get("required") or []
        }
    if kind == "array":
        count = int(schema.get("minItems") or 0)
        return [schema_instance(schema.get("items") or {}, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum")
        if low is None and schema.get("exclusiveMinimum") is not None:
            low = schema["exclusiveMinimum"] + (1 if kind == "integer" else 0.5)
        high = schema.get("maximum")
        if high is None and schema.get("exclusiveMaximum") is not None:
            high = schema["exclusiveMaximum"] - (1 if kind == "integer" else 0.5)
        value = low if low is not None else 0
        if high is not None and value > high:
            value = high
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "x" * int(schema.get("minLength") or 0)



# --------------------------------------------------------------------------- the scripted explainer

SCRIPTED = "(Scripted demo reply.) "
ASKED = "(You asked a question: a real explainer model would answer it here.) "
TYPICAL_CASE = " I asked the model about a typical case: it answers **%(output)s**."
NOTE = "(Scripted demo note.) We went through how the model decides, one idea at a time."
SEEMED_CLEAR = " Seemed clear: %(concepts)s."
ANOTHER_LOOK = " Worth another look: %(concepts)s."
SPACE, LIST_SEPARATOR = " ", ", "

# The fixed phrases in Simplified Chinese, keyed by the English text: those of the tutor's templates as
# locale/zh_Hans/LC_MESSAGES/django.po translates them (the fake runs without Django's translations), and
# the scripted model's own.
ZH_HANS = {
    SCRIPTED: "（脚本演示回复。）",
    ASKED: "（你提了一个问题：真正的讲解模型会在这里回答它。）",
    TYPICAL_CASE: "我向模型询问了一个典型案例：它的回答是 **%(output)s**。",
    NOTE: "（脚本演示备注。）我们一次一个要点，讲解了模型如何做出决定。",
    SEEMED_CLEAR: "似乎已经清楚的：%(concepts)s。",
    ANOTHER_LOOK: "值得再看一遍的：%(concepts)s。",
    SPACE: "",
    LIST_SEPARATOR: "、",
    EXPLAIN: "我们来看 **%(label)s**。%(description)s",
    ANOTHER_WAY: "换个角度理解 **%(label)s**：%(description)s",
    CORRECTION: "不太对。请记住 **%(label)s**：%(description)s",
    CHECK: "关于 **%(label)s** 的小测验。",
    SUMMARY: "关于这个模型就讲到这里。简而言之：",
    READY: "准备好后即可继续。",
    GO_ON: "准备好继续时，请发送任意消息（例如“好”）。",
    ANSWER_WITH_LETTER: "请用所选选项的字母作答。",
    RIGHT: "答对了！",
    ANSWER_AGAIN: "请用其中一个字母作答。",
}
PHRASES = {"Simplified Chinese": ZH_HANS}  # the language's name as the prompt's "Write in …" gives it


def translator(system: str):
    """The function that puts a fixed phrase in the language the system prompt asks for (English: as it is)."""
    table = next((table for name, table in PHRASES.items() if f"Write in {name}" in system), {})
    return lambda phrase: table.get(phrase, phrase)


def _system_text(api: str, body: dict) -> str:
    if api == "anthropic":
        return text_of(body.get("system"))
    return "\n".join(text_of(m.get("content")) for m in body.get("messages") or []
                     if isinstance(m, dict) and m.get("role") == "system")


def _tag(text: str, name: str):
    match = re.search(rf"<{name}>\s*(.*?)\s*</{name}>", text, re.S)
    if not match:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def _trailing_tool_results(messages) -> list:
    """The tool results after the last message the participant wrote (OpenAI `tool` messages, Anthropic
    `tool_result` blocks), parsed."""
    out = []
    for message in reversed(messages or []):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = [p for p in content if isinstance(p, dict) and p.get("type") == "tool_result"] if isinstance(content, list) else []
        if message.get("role") == "tool":
            out.append(text_of(content))
        elif blocks:
            out.extend(text_of(b.get("content")) for b in blocks)
        elif message.get("role") in ("user", "system"):
            break
    parsed = []
    for text in out:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            parsed.append({"text": text})
    return parsed


def scripted_update(model: dict, evidence: dict) -> dict:
    """A learner model updated like a careful explainer would: up after teaching and right answers, down after wrong."""
    new = json.loads(json.dumps(model))
    concepts = new.get("concepts") or {}
    concept, act = evidence.get("concept"), evidence.get("explainer_act")
    notes = []
    if concept in concepts and act in TAUGHT_ACTS:
        m = float(concepts[concept]["mastery"])
        concepts[concept]["mastery"] = round(m + (1 - m) * 0.2, 3)
        concepts[concept]["evidence"] = (concepts[concept].get("evidence") or [])[-4:] + [f"taught ({act})"]
        notes.append(f"{concept} was taught ({act})")
    check = evidence.get("check") or {}
    if concept in concepts and check.get("correct") is not None:
        m = float(concepts[concept]["mastery"])
        right = bool(check["correct"])
        concepts[concept]["mastery"] = round(m + (1 - m) * 0.5 if right else m * 0.4, 3)
        concepts[concept]["evidence"] = (concepts[concept].get("evidence") or [])[-4:] + [
            f"check {check.get('item')}: {'right' if right else 'wrong'}"]
        notes.append(f"the check on {concept} was answered {'right' if right else 'wrong'}")
    new["why"] = "scripted demo update: " + ("; ".join(notes) if notes else "nothing new")
    return new


def scripted_move(move: dict, results: list, concepts: list, asked: str, translate=str) -> str:
    """The reply to the `<next_move>` of the prompt, from the tutor's templates (explainers.learner.moves), marked
    as scripted; `translate` puts the fixed phrases in the prompt's language (`translator`)."""
    t = translate
    act, label, description = move.get("act"), move.get("label", ""), move.get("description", "")
    prefix = t(SCRIPTED)
    if move.get("previous_answer") == "right":
        prefix += t(RIGHT) + t(SPACE)
    if move.get("again"):
        prefix += t(ANSWER_AGAIN) + t(SPACE)
    elif "?" in asked or "？" in asked:
        prefix += t(ASKED)
    if act == "summary":
        return prefix + summary_text([f"- **{c.get('label')}**: {c.get('description')}" for c in concepts], translate=t)
    if act == "check":
        case = "".join(f"- {name}: **{value}**\n" for name, value in (move.get("case") or {}).items())
        options = "\n".join(f"- **{o['id']}**: {o['text']}" for o in move.get("options") or [])
        return (prefix + t(CHECK) % {"label": label} + f"\n\n{move.get('question', '')}\n\n"
                + (f"{case}\n" if case else "") + f"{options}\n\n{t(ANSWER_WITH_LETTER)}")
    seen = next((r for r in results if "output" in r), None) if act == "example" else None
    case = t(TYPICAL_CASE) % {"output": seen["output"]} if seen else ""
    return prefix + taught_text(act if act in TEMPLATES else "explain", label, description, translate=t, extra=case)


def explainer_script(api: str, body: dict) -> dict | None:
    """What the scripted explainer does for this request ({"json"|"reply"|"tool_calls": ...}), or None."""
    system = _system_text(api, body)
    if "<" not in system:
        return None
    t = translator(system)
    model = _tag(system, "learner_model")
    concepts = _tag(system, "concepts") or []
    if model is not None and "<evidence>" in system:
        return {"json": scripted_update(model, _tag(system, "evidence") or {})}
    if "<post_test>" in system:
        masteries = {c: float(v.get("mastery", 0.5)) for c, v in ((model or {}).get("concepts") or {}).items()}
        mean = sum(masteries.values()) / len(masteries) if masteries else 0.5
        items = {}
        for item in _tag(system, "post_test") or []:
            m = masteries.get(item.get("concept"), mean)
            guess = 1 / len(item["options"]) if item.get("options") else 0.05
            items[item["id"]] = {"p_correct": round(m * 0.9 + (1 - m) * guess, 3)}
        return {"json": {"items": items}}
    if "<meeting_note_request/>" in system:
        labels = {c.get("id"): c.get("label") for c in concepts}
        states = ((model or {}).get("concepts") or {}).items()
        clear = [labels.get(c, c) for c, v in states if float(v.get("mastery", 0)) >= 0.7]
        review = [labels.get(c, c) for c, v in states if float(v.get("mastery", 0)) < 0.7]
        note = t(NOTE)
        if clear:
            note += t(SEEMED_CLEAR) % {"concepts": t(LIST_SEPARATOR).join(clear)}
        if review:
            note += t(ANOTHER_LOOK) % {"concepts": t(LIST_SEPARATOR).join(review)}
        return {"reply": note}
    move = _tag(system, "next_move")
    if move is None:
        return None
    messages = body.get("messages") or []
    results = _trailing_tool_results(messages)
    choice = body.get("tool_choice")
    may_call = bool(body.get("tools")) and choice != "none" and not (isinstance(choice, dict) and choice.get("type") == "none")
    if move.get("act") in ("example", "correction") and may_call and not results:
        for tool in body.get("tools") or []:
            name = (tool.get("function") or {}).get("name") if api == "openai" else tool.get("name")
            if name == "predict":
                params = (tool.get("function") or {}).get("parameters") if api == "openai" else tool.get("input_schema")
                return {"tool_calls": [{"name": "predict", "arguments": schema_instance(params or {})}]}
    asked = "" if results else last_user_text(messages)
    return {"reply": scripted_move(move, results, concepts, asked, translate=t)}

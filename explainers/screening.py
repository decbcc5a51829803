"""The screen a transcript passes before a yoked participant reads it: personal details redacted by rule.

`transcript_redact` is a pure function (no database, no settings): given a conversation's turns as
(author, text) pairs it returns the texts with every e-mail address, web address, phone number and name the
participant gave replaced by a placeholder, and how many of each it replaced. The rule, in order:

1. Links and web addresses: a Markdown link `[text](address)` becomes `text [link removed]`; an autolink, a
   bare `http(s)://...`, `ftp://...` or `www....` address, or a bare `name.tld/...` with a common top-level
   domain (`_TLDS`) becomes `[link removed]`.
2. E-mail addresses (`local@domain.tld`): `[e-mail removed]`.
3. Phone numbers: `[phone removed]`. A phone number is 7 to 15 digits, optionally after `+`, in groups
   separated by single spaces, hyphens or dots or with an area code in parentheses, every group after the
   first of two digits or more; a run of digits without separators only from 9 digits. Not a phone number:
   a decimal number (41.5, 0.18, 22.0000001), a date (2024-03-15, 15.03.2024, 03/15/2024), an amount of
   money (after $ € £ ¥, or before k, m, %, USD, EUR, GBP, dollars, euros, pounds, per, a year), a number
   with thousands separators (41,500), a range of two numbers of four digits or more (40000-60000), a list
   of one- and two-digit numbers (10 20 30 40). A cue word in the 30 characters before it (phone, call,
   tel, mobile, cell, number, whatsapp, text me, reach me, ring) makes any such run of 6 to 15 digits a
   phone number whatever its shape (dates and small decimals excepted).
4. Names the participant gave (participant turns only): after "my name is", "my name's", "name:" (the next
   word even in lower case, then up to two more capitalised words); after "I'm", "I am", "this is", "call
   me" and in a signature line (a last line such as "Thanks, Anna", "Best,\nAnna Berg", "- Anna") up to
   three capitalised words that are not common words (`_NOT_NAMES`). Each name, and each of its words, is
   then replaced by `[name removed]` wherever it recurs as a whole word in any turn, the explainer's
   included, whatever its case.

The placeholders are plain text, so the redacted text renders as Markdown without becoming a link.
"""
import re
from dataclasses import dataclass, field

RULES_VERSION = 1

LINK = "[link removed]"
EMAIL = "[e-mail removed]"
PHONE = "[phone removed]"
NAME = "[name removed]"

# Two-letter words ("it", "in", "no", "me", "at", "us") are left out: "the model.It" is a typo, not an address.
_TLDS = "com|org|net|edu|gov|io|co|uk|de|fr|nl|ch|dk|fi|eu|ca|au|cn|jp|ru|br|info|biz|ly|app|dev|ai|xyz|site|online"
_MD_LINK = re.compile(r"\[([^\]\n]*)\]\(\s*<?[^)\s>]+>?(?:\s+\"[^\"]*\")?\s*\)")
_AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^>\s]+>", re.I)
_URL = re.compile(
    r"\b(?:(?:https?|ftp)://|www\.)[^\s<>()\[\]\"']+[^\s<>()\[\]\"'.,;:!?]"
    rf"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:{_TLDS})(?:/[^\s<>()\[\]\"']*[^\s<>()\[\]\"'.,;:!?])?(?![\w@-])",
    re.I,
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.I)
# A candidate: digits with the separators a phone number uses; its shape is checked in `_is_phone`.
_PHONE_CANDIDATE = re.compile(r"(?<![\w.,/+-])\+?(?:\(\d{1,5}\)[ .-]?)?\d(?:[ .-]?\(?\d+\)?)*(?![\w]|[.,/-]?\d)")
_PHONE_CUE = re.compile(r"\b(?:phone|call|tel|telephone|mobile|cell|number|whats ?app|text me|reach me|ring)\b",
                        re.I)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_MONEY_BEFORE = re.compile(r"[$€£¥]\s*$")
_MONEY_AFTER = re.compile(r"^\s*(?:k\b|m\b|%|usd|eur|gbp|dollars?|euros?|pounds?|per\b|a year|/yr)", re.I)

_WORD = r"[^\W\d_][^\W\d_'’-]*"
_CAP_NAME = rf"({_WORD}(?:[ \t]+{_WORD}){{0,2}})"
_NAME_STRONG = re.compile(rf"\b(?:my name is|my name's|my name’s|name:)[ \t]+{_CAP_NAME}", re.I)
_NAME_WEAK = re.compile(rf"(?i:\b(?:i'm|i’m|i am|this is|call me))[ \t]+{_CAP_NAME}")
_SIGN_OFF = re.compile(
    rf"(?:^|\n)[ \t]*(?:thanks|thank you|many thanks|best|best wishes|best regards|kind regards|regards|cheers|"
    rf"sincerely|yours|love)[ \t]*[,.!]?[ \t]*\n?[ \t]*{_CAP_NAME}[ \t]*[.!]?[ \t]*$", re.I,
)
_DASH_SIGNATURE = re.compile(rf"(?:^|\n)[ \t]*[-–—~][ \t]*{_CAP_NAME}[ \t]*$")
# Capitalised words that follow "I'm" or end a name cue without being a name.
_NOT_NAMES = frozenset("""
a an the and or but so not no yes just still really very also only here there from in on at with about
sure confused lost interested curious ready done happy glad fine good ok okay new back going trying
thinking wondering learning reading looking working studying student teacher participant human person
afraid sorry unsure certain aware able unable tired bored excited nervous worried confident pretty
quite kind of sort is was be it this that what how why when where who which i me my you your we our they
hi hello hey thanks thank best regards cheers sincerely yours love dear
important interesting great helpful hard easy clear unclear confusing useful weird strange cool nice awesome
amazing true false right wrong correct incorrect
""".split())


@dataclass(frozen=True)
class Redacted:
    texts: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # what was replaced: link, email, phone, name

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def transcript_redact(turns: list[tuple[str, str]]) -> Redacted:
    """Return the texts of `turns` ((author, text) pairs, author "participant" or "explainer") redacted by
    the rule of this module's docstring, and the number of replacements of each kind."""
    counts = {"link": 0, "email": 0, "phone": 0, "name": 0}
    names = set()
    for author, text in turns:
        if author == "participant":
            names |= names_given(text)
    texts = []
    for _author, text in turns:
        text, n = _redact_links(text)
        counts["link"] += n
        text, n = _EMAIL.subn(EMAIL, text)
        counts["email"] += n
        text, n = redact_phones(text)
        counts["phone"] += n
        text, n = _redact_names(text, names)
        counts["name"] += n
        texts.append(text)
    return Redacted(texts=texts, counts={k: v for k, v in counts.items() if v})


def text_redact(text: str) -> str:
    """Redact one text on its own (no names from other turns): links, e-mails, phones and names it gives."""
    return transcript_redact([("participant", text)]).texts[0]


def _redact_links(text: str) -> tuple[str, int]:
    n = 0

    def markdown(match: re.Match) -> str:
        nonlocal n
        n += 1
        label = match.group(1).strip()
        label = "" if _URL.fullmatch(label) or _EMAIL.fullmatch(label) else label
        return f"{label} {LINK}" if label else LINK

    text = _MD_LINK.sub(markdown, text)
    text, m = _AUTOLINK.subn(LINK, text)
    n += m
    # an e-mail's domain looks like a web address: leave e-mails for their own rule
    pieces, last = [], 0
    for email in _EMAIL.finditer(text):
        part, m = _URL.subn(LINK, text[last:email.start()])
        pieces += [part, email.group(0)]
        n += m
        last = email.end()
    part, m = _URL.subn(LINK, text[last:])
    n += m
    return "".join(pieces) + part, n


def redact_phones(text: str) -> tuple[str, int]:
    """Replace the phone numbers in `text` (rule 3 of the module docstring); return the text and how many."""
    out, last, n = [], 0, 0
    for match in _PHONE_CANDIDATE.finditer(text):
        candidate = match.group(0).rstrip(" .-")
        end = match.start() + len(candidate)
        if _is_phone(candidate, before=text[max(0, match.start() - 30):match.start()], after=text[end:end + 12]):
            out += [text[last:match.start()], PHONE]
            last = end
            n += 1
    return "".join(out) + text[last:], n


def _is_phone(candidate: str, *, before: str, after: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 6 <= len(digits) <= 15 or _DATE.fullmatch(candidate) or re.fullmatch(r"\d{1,2}\.\d+", candidate):
        return False
    if _PHONE_CUE.search(before):
        return True
    if len(digits) < 7 or _MONEY_BEFORE.search(before) or _MONEY_AFTER.match(after):
        return False
    if re.fullmatch(r"\d+\.\d+", candidate):  # a decimal number
        return False
    if re.fullmatch(r"\d{4,}-\d{4,}", candidate) and not candidate.startswith("0"):  # a range
        return False
    groups = re.findall(r"\d+", candidate)
    if len(groups) == 1:
        return candidate.startswith("+") or len(digits) >= 9
    if re.fullmatch(r"[\d ]+", candidate) and all(len(g) <= 2 for g in groups):  # "10 20 30 40": a list
        return False
    return all(len(g) >= 2 for g in groups[1:])


def names_given(text: str) -> set[str]:
    """The names a participant gives in `text`: each full name found and each of its words."""
    found = set()
    for pattern, strong in ((_NAME_STRONG, True), (_NAME_WEAK, False), (_SIGN_OFF, False), (_DASH_SIGNATURE, False)):
        for match in pattern.finditer(text):
            words = []
            for word in match.group(1).split():
                if word.lower() in _NOT_NAMES or (not strong and not word[0].isupper()):
                    break
                if strong and words and not word[0].isupper():
                    break  # "my name is anna and ...": the name is the first word
                words.append(word.strip("'’-"))
            words = [w for w in words if len(w) >= 2]
            if words:
                found.add(" ".join(words))
                found.update(words)
    return found


def _redact_names(text: str, names: set[str]) -> tuple[str, int]:
    if not names:
        return text, 0
    # the longest first, so a full name is one placeholder rather than one per word
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    # "Anna's" loses "Anna"; "Annabel" and "Anna-Lena" are other words
    return re.subn(rf"(?<![\w'’-])(?:{alternatives})(?![\w-])(?!['’](?!s\b)\w)", NAME, text, flags=re.I)

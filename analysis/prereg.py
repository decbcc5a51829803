"""The preregistration document of a study version: its design and analysis plan, as Markdown and as HTML.

`prereg_markdown` is a pure function of a normalised spec and the version's identity (number, sha256), so
it can be tested on a hand-made spec; `prereg_html` renders that Markdown with the participant pages' own
sanitising renderer into one self-contained page (inline CSS, no scripts, no external resource) that a lab
can upload to OSF or AsPredicted. docs/study-file.md, "`analysis`: the analysis plan", defines the plan.
"""
from __future__ import annotations

import datetime
import html
from collections import Counter

from participants.markdown import render_markdown
from studies.spec import localize

NO_PLAN = "This study file has no analysis plan (`analysis:`); hypotheses are not preregistered."
LANG = "en"

MEASURES = {
    "pre": "pre-test score: the mean score of the participant's pre-test items (0 to 1)",
    "post": "post-test score: the mean score of the participant's post-test items (0 to 1)",
    "gain": "gain: post-test score minus pre-test score",
    "normalized_gain": "normalised gain (post − pre) / (1 − pre); undefined, and left out, at pre = 1",
    "forward_sim_accuracy": "forward-simulation accuracy: the share of post-test predict items answered as the "
                            "target model answers them",
    "brier": "Brier score of the confidence given on post-test predict items (lower is better)",
    "ece": "expected calibration error of that confidence (10 equal-width bins)",
    "time_on_task_s": "time on task, consent to completion, in seconds",
    "turns": "the number of messages the participant wrote to the explainer",
    "tokens": "the tokens of the language-model calls made for the participant",
    "cost_usd": "the cost of those calls, in US$",
    "lm_accuracy": "learner-model fidelity: the accuracy of the explainer's predictions of the post-test answers",
    "lm_brier": "learner-model fidelity: the Brier score of those predictions",
}
RECORDED = {
    "form_order": "the order of the two parallel test forms (AB or BA)",
    "language": "the language the participant used",
    "stratum": "the allocation stratum",
    "paste_count": "pastes over all pages (browser-reported)",
    "hidden_ms": "time the page was hidden, over all pages (ms)",
    "visibility_changes": "page visibility changes over all pages",
    "first_input_ms_median": "median time from page load to first input (ms)",
    "pages_reloaded": "pages shown more than once",
}
# Variables fixed before the explanation begins: a covariate measured later may be affected by the arm.
BASELINE = {"pre", "form_order", "language", "stratum"}
DIRECTION = {"two-sided": "≠", "greater": ">", "less": "<"}
CORRECTION = {"holm": "Holm", "bonferroni": "Bonferroni", "none": "no correction"}
PHASES = (("pre_test", "pre-test"), ("post_test", "post-test"))


def _cell(text) -> str:
    """Text that stays in its Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "—"


def _text(value) -> str:
    return localize(value, LANG) if value else ""


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _kinds(ids: list[str], items: dict) -> str:
    counts = Counter(items[i]["kind"] for i in ids if i in items)
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def _options(arm: dict) -> str:
    return ", ".join(f"{name}: {str(value).lower() if isinstance(value, bool) else value}"
                     for name, value in sorted((arm.get("options") or {}).items()))


def hypotheses(plan: dict) -> list[dict]:
    """Every outcome × contrast of the plan, in order, numbered H1, H2, ..., with its family's size."""
    rows = [
        {"id": f"H{n}", "outcome": o, "a": a, "b": b}
        for n, (o, (a, b)) in enumerate(((o, c) for o in plan["outcomes"] for c in plan["contrasts"]), start=1)
    ]
    confirmatory = sum(1 for r in rows if r["outcome"]["confirmatory"])
    for row in rows:
        row["family"] = confirmatory if row["outcome"]["confirmatory"] else len(rows) - confirmatory
    return rows


def _variable(name: str, spec: dict, scales: dict) -> str:
    """What a measure, scale, questionnaire item or recorded variable of the plan is, in words."""
    items = {item["id"]: item for item in spec["items"]}
    if name in MEASURES:
        return MEASURES[name]
    if name in scales:
        scale = scales[name]
        reverse = ""
        if scale["reverse"]:
            reverse = f"; reverse-keyed (scored min + max − answer): {', '.join(scale['reverse'])}"
        return f"scale: the {scale['scoring']} of items {', '.join(scale['items'])}{reverse}"
    if name in items:
        item = items[name]
        scale = item.get("scale")
        span = f" {scale['min']} to {scale['max']}" if scale else ""
        return f"questionnaire item ({item['kind']}{span}): “{_text(item['prompt']).strip()}”"
    return RECORDED.get(name, "a recorded variable of the export")


def _sample_size(spec: dict) -> list[str]:
    total = (spec.get("budget") or {}).get("max_completers")
    if total:
        return [f"The study stops allocating at **{total}** participants holding a seat "
                "(`budget.max_completers`).", ""]
    caps = {arm["id"]: (arm.get("budget") or {}).get("max_completers") for arm in spec["arms"]}
    if caps and all(caps.values()):
        listed = ", ".join(f"{arm} {n}" for arm, n in caps.items())
        return [f"Allocation stops at the arms' caps (`arms[].budget.max_completers`): {listed}; "
                f"**{sum(caps.values())}** in all.", ""]
    if any(caps.values()):
        listed = ", ".join(f"{arm} {n}" for arm, n in caps.items() if n)
        return [f"Some arms are capped (`arms[].budget.max_completers`): {listed}; the others are not, so the "
                "study file fixes no total sample size.", ""]
    return ["The study file fixes no sample size (no `budget.max_completers`, no arm caps "
            "`arms[].budget.max_completers`): state the planned number of participants and how it was chosen "
            "alongside this document.", ""]


def prereg_markdown(*, spec: dict, number: int, sha256: str, state: str = "", target_sha256: str = "",
                    generated_on: datetime.date | None = None) -> str:
    """Return the preregistration document of a normalised spec, as Markdown.

    The design always; the hypotheses, covariates, exclusions and model only when the spec has `analysis`
    (otherwise the document says so in NO_PLAN's words).
    """
    generated_on = generated_on or datetime.date.today()
    items = {item["id"]: item for item in spec["items"]}
    arms = spec["arms"]
    plan = spec.get("analysis")
    title = _text(spec["title"])
    out = [f"# Preregistration: {title}", ""]
    state_note = f" ({state})" if state else ""
    if state == "draft":
        state_note = (" (a draft, not yet launched: its study file can no longer change, but the target's answer "
                      "keys are frozen at launch)")
    out += [
        f"- Study: `{spec['slug']}`, version {number}{state_note}",
        f"- Study file sha256: `{sha256}` (the study file and every file of its folder; a changed byte is a new "
        "version)",
    ]
    if target_sha256:
        out.append(f"- Target model sha256: `{target_sha256}` (the trained target whose answers are the keys)")
    out += [f"- Languages: {', '.join(spec['languages'])}", ""]
    if plan is None:
        out += [f"**{NO_PLAN}**", ""]

    # -- design
    weights = ":".join(str(arm["weight"]) for arm in arms)
    out += ["## Design", "",
            f"A randomised between-participants experiment with {len(arms)} arms (weights {weights}). Each "
            "participant takes a pre-test, one arm's explanation and a parallel post-test"
            + (", then a questionnaire." if spec["instruments"]["questionnaire"] else "."), "",
            "### Arms", ""]
    out += _table(["arm", "kind", "weight", "label", "model", "options"], [
        [f"`{arm['id']}`", arm["kind"], arm["weight"], _text(arm.get("label")),
         (arm.get("llm") or {}).get("model") or "", _options(arm)]
        for arm in arms
    ])
    allocation = spec["allocation"]
    if allocation["method"] == "blocked":
        how = f"permuted blocks of {allocation['block_size']}"
    else:
        how = "simple weighted randomisation, one draw per participant"
    if allocation["when"] == "after_pretest":
        cuts = ", ".join(f"{c:g}" for c in allocation["strata"])
        when = f"after the pre-test, stratified by the pre-test proportion correct (cut points {cuts})"
    else:
        when = "at consent"
    out += ["### Allocation", "",
            f"Participants are allocated by {how}, {when}, in the ratio of the weights. The order of the two "
            "parallel test forms (A then B, or B then A) is counterbalanced at random.", "",
            "### Instruments", ""]
    instruments = spec["instruments"]
    rows = []
    for phase, name in PHASES:
        for form in ("A", "B"):
            ids = instruments[phase]["forms"][form]
            rows.append([name, form, len(ids), _kinds(ids, items)])
    for phase, name in (("questionnaire", "questionnaire"), ("practice", "practice bank (tutor's checks)")):
        ids = instruments.get(phase) or []
        if ids:
            rows.append([name, "", len(ids), _kinds(ids, items)])
    out += _table(["phase", "form", "items", "kinds"], rows)
    if spec["concepts"]:
        out += ["Concepts the tests measure: " + "; ".join(
            f"`{c['id']}` ({_text(c['label'])})" for c in spec["concepts"]) + ".", ""]
    target = spec.get("target")
    if target:
        what = target.get("estimator") if target["kind"] == "sklearn" else f"language model {target['llm']['model']}"
        out += [f"Participants learn to predict a {target['kind']} target ({what}; features: "
                f"{', '.join(target['features'])}).", ""]
    out += ["### Sample size", ""] + _sample_size(spec)

    if plan is not None:
        out += _plan_sections(spec, plan)
    out += ["---", "",
            f"Generated by Teachback on {generated_on.isoformat()} from version {number} of `{spec['slug']}` "
            f"(sha256 `{sha256}`).", ""]
    return "\n".join(out)


def _plan_sections(spec: dict, plan: dict) -> list[str]:
    scales = {scale["id"]: scale for scale in plan["scales"]}
    alpha = f"{plan['alpha']:g}"
    correction = CORRECTION[plan["correction"]]
    rows = hypotheses(plan)
    confirmatory = sum(1 for r in rows if r["outcome"]["confirmatory"])
    if plan["correction"] == "none":
        family = "No correction for multiple comparisons is applied."
    else:
        family = (f"The {confirmatory} confirmatory hypotheses are one family, corrected together ({correction}); "
                  "the exploratory ones are corrected with the same method over their own family.")
    out = ["## Hypotheses", "",
           f"Each outcome is compared between the arms of every planned contrast (a − b; the reference arm is "
           f"`{plan['reference_arm']}`), at α = {alpha}. {family} Exploratory results are reported as "
           "exploratory, never as a test of a hypothesis.", ""]
    table = []
    for row in rows:
        outcome = row["outcome"]
        sided = outcome["alternative"]
        if plan["correction"] == "none":
            test = f"{sided}, α = {alpha}, no correction"
        else:
            test = f"{sided}, α = {alpha}, {correction} over {row['family']}"
        status = ("confirmatory" if outcome["confirmatory"] else "exploratory") + f" ({outcome['role']})"
        table.append([row["id"], f"`{outcome['id']}`", f"`{outcome['measure']}`",
                      f"{row['a']} − {row['b']} {DIRECTION[sided]} 0", test, status])
    if table:
        out += _table(["", "outcome", "measure", "hypothesis (contrast a − b)", "test", "status"], table)
    else:
        out += ["**The study has a single arm: the plan compares nothing, and no hypothesis is preregistered.**", ""]

    out += ["## Outcomes and scales", ""]
    for outcome in plan["outcomes"]:
        out.append(f"- `{outcome['id']}` ({outcome['role']}): `{outcome['measure']}`, "
                   f"{_variable(outcome['measure'], spec, scales)}")
    out.append("")
    if scales:
        out += ["Scale scores are computed from the items as declared (reverse-keyed items first reversed); "
                "Cronbach's α of each scale is reported from the analysed participants' answers:", ""]
        out += [f"- `{s['id']}`: {_variable(s['id'], spec, scales)}" for s in plan["scales"]] + [""]

    out += ["## Covariates", ""]
    if plan["covariates"]:
        for name in plan["covariates"]:
            when = "" if name in BASELINE else (" — measured after the explanation began, so the arm may affect "
                                                "it; it is not a baseline covariate")
            out.append(f"- `{name}`: {_variable(name, spec, scales)}{when}")
        out.append("")
    else:
        out += ["None: the arms are compared without adjustment.", ""]

    exclusions = plan["exclusions"]
    out += ["## Exclusions", "",
            "- Always excluded: simulated participants (bots entered with a signed simulation link) and pilot "
            "entries.",
            "- Analysed: participants who completed the study. Those who declined consent, withdrew or left are "
            "not analysed; the participant flow (CONSORT) reports them per arm, with every exclusion below."]
    items = {item["id"]: item for item in spec["items"]}
    for ident in exclusions["attention_items"]:
        out.append(f"- Excluded: a wrong answer to the attention check `{ident}` "
                   f"(“{_text(items[ident]['prompt']).strip()}”).")
    if exclusions["min_seconds"]:
        out.append(f"- Excluded: completing the study in less than {exclusions['min_seconds']} seconds from consent.")
    out += ["- A participant missing an outcome or a covariate is left out of that analysis only (complete "
            "cases); the n of each analysis is reported.", ""]

    covariates = "".join(f" + {name}" for name in plan["covariates"])
    formula = f'Y ~ C(arm, Treatment("{plan["reference_arm"]}")){covariates}'
    if plan["robust"] == "HC3":
        errors = ("HC3 heteroscedasticity-robust standard errors (MacKinnon and White), so arms may differ in "
                  "variance; the arm term is tested by the HC3 Wald F")
    else:
        errors = "classical (homoscedastic) standard errors; the arm term is tested by the classical F"
    if plan["correction"] == "none":
        intervals = f"Confidence intervals are at {(1 - plan['alpha']) * 100:g} % and unadjusted."
    else:
        holm = "; Holm's step-down has no interval of its own" if plan["correction"] == "holm" else ""
        intervals = (f"Confidence intervals of the contrasts are adjusted to match the correction (the Bonferroni "
                     f"level 1 − α/m over the family{holm}) and labelled so; one-sided hypotheses get one-sided "
                     "intervals.")
    out += ["## Model", "",
            f"For each outcome Y, ordinary least squares `{formula}`"
            + ("" if plan["covariates"] else " (a one-way ANOVA)")
            + " — an ANCOVA of the outcome on the arm and the covariates, with treatment coding against the "
            "reference arm. The arm term is tested with Type II sums of squares (each term after every term that "
            f"does not contain it, as R's `car::Anova(type = 2)`), with {errors}. Each contrast a − b is the "
            "difference of the two arms' adjusted means (at the covariates' means), tested by t on the model's "
            "residual degrees of freedom, one-sided where the hypothesis is. Effect sizes: classic and partial "
            "η² of the arm term with the interval of partial η², and each contrast's difference with its "
            "confidence interval.", "", intervals, ""]
    return out


CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; margin: 0; }
main { max-width: 60rem; margin: 0 auto; padding: 1.5rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9em; }
li code { overflow-wrap: anywhere; } td code { white-space: nowrap; }
hr { border: 0; border-top: 1px solid #ccc; margin-top: 2rem; }
@media print { main { max-width: none; } }
"""


def prereg_html(*, markdown: str, title: str) -> str:
    """Return the Markdown as one self-contained HTML page: inline CSS, no scripts, nothing fetched."""
    body = render_markdown(markdown, links=False)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )

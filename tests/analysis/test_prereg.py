"""The analysis plan of a study file and its preregistration document (`study_prereg`).

The plan validates with a line for every mistake, is normalised only when declared (so a file without one
keeps its sha256), and `study_prereg` writes the document of a stored version with its hash and every
hypothesis, as Markdown and as HTML that fetches nothing.
"""
import datetime
import re
import shutil

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from analysis.codebook import TABLES
from analysis.measures import MEASURES
from analysis.prereg import NO_PLAN, hypotheses, prereg_html, prereg_markdown
from conftest import EXAMPLE
from studies.services import study_version_create
from studies.spec import (
    ANALYSIS_MEASURES,
    ANALYSIS_RECORDED,
    StudyFileInvalid,
    canonical_hash,
    study_file_read,
)

BLOCK = re.compile(r"^analysis:\n(?:[ #].*\n|\n(?=[ #]))*", re.MULTILINE)


def without_plan(data) -> None:
    del data["analysis"]


def plan_text(block: str) -> str:
    """The example's study.yaml with its `analysis:` block replaced by `block`."""
    text = (EXAMPLE / "study.yaml").read_text(encoding="utf-8")
    assert len(BLOCK.findall(text)) == 1
    return BLOCK.sub(block.rstrip("\n") + "\n\n", text)


def errors_for(tmp_path, block: str):
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    text = plan_text(block)
    (folder / "study.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    return text, caught.value.errors


def line_of(text: str, needle: str) -> int:
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# ------------------------------------------------------------------------------------------ the plan


def test_the_example_plan_validates_and_normalises():
    plan = study_file_read(EXAMPLE).spec["analysis"]
    assert plan == {
        "outcomes": [
            {"id": "learning", "measure": "post", "role": "primary", "alternative": "two-sided", "confirmatory": True},
            {"id": "simulation", "measure": "forward_sim_accuracy", "role": "secondary",
             "alternative": "two-sided", "confirmatory": False},
            {"id": "understanding", "measure": "q_understand", "role": "secondary", "alternative": "two-sided",
             "confirmatory": False},
            {"id": "trust", "measure": "q_trust", "role": "secondary", "alternative": "two-sided",
             "confirmatory": False},
        ],
        "scales": [],
        "covariates": ["pre"],
        "reference_arm": "static",
        "contrasts": [["chat", "static"], ["agentic", "static"], ["tutor", "static"]],
        "contrast_set": "vs_reference",
        "alpha": 0.05,
        "correction": "holm",
        "robust": "HC3",
        "exclusions": {"attention_items": [], "min_seconds": 180},
    }


def test_defaults_are_filled_in_and_all_pairs_spelt_out(study_folder):
    def edit(data):
        data["analysis"] = {"outcomes": [{"id": "learning", "measure": "gain", "role": "primary"}],
                            "contrasts": "all_pairs",
                            "scales": [{"id": "attitude", "items": ["q_understand", "q_trust"]}]}

    study = study_file_read(study_folder(edit))
    plan = study.spec["analysis"]
    text = prereg_markdown(spec=study.spec, number=1, sha256=study.sha256)
    assert "- `attitude`: scale: the mean of items q_understand, q_trust\n" in text
    assert "| H6 | `learning` | `gain` | agentic − tutor ≠ 0 |" in text
    assert plan["outcomes"] == [{"id": "learning", "measure": "gain", "role": "primary", "alternative": "two-sided",
                                 "confirmatory": True}]
    assert plan["reference_arm"] == "static"  # the first arm
    assert plan["contrasts"] == [["static", "chat"], ["static", "agentic"], ["static", "tutor"], ["chat", "agentic"],
                                 ["chat", "tutor"], ["agentic", "tutor"]]
    assert plan["contrast_set"] == "all_pairs"
    assert plan["scales"] == [
        {"id": "attitude", "items": ["q_understand", "q_trust"], "scoring": "mean", "reverse": []}]
    assert (plan["covariates"], plan["alpha"], plan["correction"], plan["robust"]) == ([], 0.05, "holm", None)
    assert plan["exclusions"] == {"attention_items": [], "min_seconds": 0}


def test_listed_contrasts_keep_their_order_and_direction(study_folder):
    def edit(data):
        data["analysis"] = {"outcomes": [{"id": "learning", "measure": "post", "role": "primary",
                                          "alternative": "greater"}],
                            "contrasts": [["agentic", "chat"], ["tutor", "static"]]}

    plan = study_file_read(study_folder(edit)).spec["analysis"]
    assert plan["contrasts"] == [["agentic", "chat"], ["tutor", "static"]]
    assert plan["contrast_set"] == "listed"


def test_a_file_without_analysis_keeps_its_sha256(study_folder):
    example = study_file_read(EXAMPLE)
    bare = study_file_read(study_folder(without_plan))
    assert "analysis" not in bare.spec
    assert bare.spec == {k: v for k, v in example.spec.items() if k != "analysis"}
    assert bare.sha256 == canonical_hash({k: v for k, v in example.spec.items() if k != "analysis"}, example.assets)
    assert bare.sha256 != example.sha256


def test_the_plan_names_the_measures_and_export_columns_the_analysis_has():
    assert set(ANALYSIS_MEASURES) <= set(MEASURES)
    participant_columns = TABLES["participants"].names
    assert set(ANALYSIS_RECORDED) <= set(participant_columns)


SCALE = """\
analysis:
  outcomes:
    - id: learning
      measure: post
      role: primary
  scales:
    - id: attitude
      items:
        - q_understand
        - {item}
      reverse:
        - {reverse}
"""

MISTAKES = [
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  contrasts:\n"
        "    - [agentic, static]\n    - [agentic, statik]\n",
        "analysis.contrasts[1][1]", "unknown arm 'statik'; did you mean 'static'?", "[agentic, statik]",
        id="unknown arm in a contrast"),
    pytest.param(
        SCALE.format(item="q_trsut", reverse="q_understand"),
        "analysis.scales[0].items[1]", "unknown item 'q_trsut'", "- q_trsut", id="unknown scale item"),
    pytest.param(
        "analysis:\n  outcomes:\n    - id: learning\n      measure: post\n      role: primary\n"
        "      alternative: bigger\n",
        "analysis.outcomes[0].alternative", "must be one of: two-sided, greater, less", "alternative: bigger",
        id="bad alternative"),
    pytest.param(
        SCALE.format(item="q_trust", reverse="q_confusing"),
        "analysis.scales[0].reverse[0]", "item 'q_confusing' is not one of this scale's items", "- q_confusing",
        id="reverse item outside the scale"),
    pytest.param(
        SCALE.format(item="q_confusing", reverse="q_understand"),
        "analysis.scales[0].items[1]", "item 'q_confusing' is a text item; a scale is made of likert and numeric items",
        "- q_confusing", id="text item in a scale"),
    pytest.param(
        SCALE.format(item="post_a3", reverse="q_understand"),
        "analysis.scales[0].items[1]", "item 'post_a3' is not in instruments.questionnaire", "- post_a3",
        id="test item in a scale"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  reference_arm: chatbot\n",
        "analysis.reference_arm", "unknown arm 'chatbot'; did you mean 'chat'?", "reference_arm: chatbot",
        id="unknown reference arm"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  contrasts:\n"
        "    - [chat, chat]\n",
        "analysis.contrasts[0]", "compares arm 'chat' with itself", "[chat, chat]", id="arm with itself"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  contrasts:\n"
        "    - [chat, static]\n    - [static, chat]\n",
        "analysis.contrasts[1]", "repeats the contrast of analysis.contrasts[0]", "[static, chat]",
        id="repeated contrast"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  contrasts:\n"
        "    - [chat, static, tutor]\n",
        "analysis.contrasts[0]", "must be a pair [arm, arm] (the contrast is the first minus the second)",
        "[chat, static, tutor]", id="not a pair"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  contrasts: some_pairs\n",
        "analysis.contrasts", "must be one of: vs_reference, all_pairs", "contrasts: some_pairs",
        id="unknown contrast set"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: pots, role: primary}\n",
        "analysis.outcomes[0].measure", "unknown measure 'pots'; did you mean 'post'?", "measure: pots",
        id="unknown measure"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n"
        "    - {id: learning, measure: gain, role: secondary}\n",
        "analysis.outcomes[1].id", "duplicate id 'learning' (also analysis.outcomes[0])", "measure: gain",
        id="duplicate outcome id"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: secondary}\n",
        "analysis.outcomes", "names no primary outcome (role: primary)", "  outcomes:", id="no primary outcome"),
    pytest.param(
        "analysis:\n  outcomes:\n    - id: learning\n      measure: post\n      role: primary\n"
        "      confirmatory: false\n",
        "analysis.outcomes[0].confirmatory", "a primary outcome is confirmatory", "confirmatory: false",
        id="exploratory primary outcome"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post}\n",
        "analysis.outcomes[0].role", "is required", "measure: post", id="missing role"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  covariates:\n"
        "    - pre\n    - post\n",
        "analysis.covariates[1]", "'post' is also an outcome (analysis.outcomes[0].measure)", "    - post",
        id="covariate is the outcome"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  covariates:\n"
        "    - pre\n    - agee\n",
        "analysis.covariates[1]", "unknown covariate 'agee'", "    - agee", id="unknown covariate"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  covariates:\n"
        "    - q_confusing\n",
        "analysis.covariates[0]", "item 'q_confusing' is a text item", "    - q_confusing", id="text covariate"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  exclusions:\n"
        "    attention_items:\n      - post_a1\n",
        "analysis.exclusions.attention_items[0]", "item 'post_a1' is not in instruments.questionnaire",
        "      - post_a1", id="attention check in a test"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  exclusions:\n"
        "    attention_items:\n      - q_trust\n",
        "analysis.exclusions.attention_items[0]", "item 'q_trust' has no key", "      - q_trust",
        id="attention check without a key"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  alhpa: 0.05\n",
        "analysis.alhpa", "unknown key; did you mean 'alpha'?", "alhpa: 0.05", id="unknown key"),
    pytest.param(
        "analysis:\n  outcomes:\n    - {id: learning, measure: post, role: primary}\n  alpha: 0.7\n",
        "analysis.alpha", "must be at most 0.5", "alpha: 0.7", id="alpha too large"),
]


@pytest.mark.parametrize(("block", "path", "message", "needle"), MISTAKES)
def test_a_mistake_in_the_plan_is_refused_with_its_field_and_line(tmp_path, block, path, message, needle):
    text, errors = errors_for(tmp_path, block)
    mine = [e for e in errors if e.path == path]
    assert mine, [str(e) for e in errors]
    assert message in mine[0].message
    assert mine[0].line == line_of(text, needle), str(mine[0])
    assert str(mine[0]).endswith(f"(study.yaml, line {mine[0].line})")


def test_a_single_arm_study_keeps_its_plan_with_nothing_to_compare(study_folder):
    def edit(data):  # as the fixtures that cut the example down to one arm do
        data["arms"] = [a for a in data["arms"] if a["kind"] == "static"]
        data["allocation"]["block_size"] = 2

    study = study_file_read(study_folder(edit))
    assert study.spec["analysis"]["contrasts"] == []
    text = prereg_markdown(spec=study.spec, number=1, sha256=study.sha256)
    assert "no hypothesis is preregistered" in text and "| H1 |" not in text


def test_the_example_plan_survives_the_fixtures_that_cut_it_down(study_folder):
    from conftest import chat_only, static_only

    for edit in (static_only, chat_only):
        assert study_file_read(study_folder(edit, name=edit.__name__)).spec["analysis"]["contrasts"] == []


# ------------------------------------------------------------------------------------------ the document


def _no_external_resource(page: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?[^"'>\s]*http""", page, re.IGNORECASE)
    assert not re.search(r"<(?:script|link|iframe|img|object)\b", page, re.IGNORECASE)
    assert "<style>" in page


def test_study_prereg_writes_both_files_with_the_hash_and_every_hypothesis(db, launch, tmp_path):
    version = launch()
    out = tmp_path / "prereg"
    call_command("study_prereg", "loan-approval", "--out", str(out))
    text = (out / "prereg.md").read_text(encoding="utf-8")
    page = (out / "prereg.html").read_text(encoding="utf-8")
    plan = version.spec["analysis"]
    rows = hypotheses(plan)
    assert len(rows) == 4 * 3
    for document in (text, page):
        assert version.sha256 in document
        assert version.target_sha256 in document
        assert "How does the loan model decide?" in document
        for row in rows:
            assert f"{row['id']}" in document
            assert f"{row['a']} − {row['b']} ≠ 0" in document
        assert "Holm over 3" in document and "Holm over 9" in document
        assert "Type II" in document and "HC3" in document
        assert "less than 180 seconds" in document
        assert "simulated participants" in document and "pilot" in document
        assert f"Generated by Teachback on {datetime.date.today().isoformat()}" in document
    assert re.search(r"^\| H1 \| `learning` \| `post` \| chat − static ≠ 0 \| two-sided, α = 0\.05, Holm over 3 \| "
                     r"confirmatory \(primary\) \|$", text, re.MULTILINE)
    assert "| H4 | `simulation` | `forward_sim_accuracy` | chat − static ≠ 0 |" in text
    assert "exploratory (secondary)" in text
    assert 'Y ~ C(arm, Treatment("static")) + pre' in text
    assert f"version {version.number} (live)" in text
    assert "<table>" in page and "<h1>Preregistration: How does the loan model decide?</h1>" in page
    _no_external_resource(page)


def test_study_prereg_without_a_plan_writes_the_design_and_exits_non_zero(db, launch, tmp_path):
    version = launch(without_plan)
    out = tmp_path / "prereg"
    with pytest.raises(CommandError) as refused:  # manage.py exits with its returncode
        call_command("study_prereg", "loan-approval", "--out", str(out))
    assert refused.value.returncode != 0
    assert NO_PLAN in str(refused.value)
    text = (out / "prereg.md").read_text(encoding="utf-8")
    page = (out / "prereg.html").read_text(encoding="utf-8")
    assert NO_PLAN in text and version.sha256 in text and "## Design" in text and "### Arms" in text
    assert "## Hypotheses" not in text and "## Model" not in text
    assert "hypotheses are not preregistered" in page
    _no_external_resource(page)


def test_study_prereg_of_a_draft_says_it_is_not_launched_yet(db, tmp_path):
    version, _ = study_version_create(study_file=study_file_read(EXAMPLE))
    call_command("study_prereg", "loan-approval", "--version", str(version.number), "--out", str(tmp_path))
    text = (tmp_path / "prereg.md").read_text(encoding="utf-8")
    assert version.sha256 in text and "a draft, not yet launched" in text
    assert "Target model sha256" not in text


def test_study_prereg_of_an_unknown_study_is_refused(db, tmp_path):
    with pytest.raises(CommandError, match="no study version"):
        call_command("study_prereg", "no-such-study", "--out", str(tmp_path))


def test_the_document_states_scales_one_sided_tests_exclusions_and_the_sample_size(study_folder):
    def edit(data):
        data["items"].append({"id": "q_attention", "kind": "single_choice", "prompt": "Please choose *blue*.",
                              "options": [{"id": "red", "text": "Red"}, {"id": "blue", "text": "Blue"}],
                              "key": "blue"})
        data["instruments"]["questionnaire"].append("q_attention")
        for arm, cap in zip(data["arms"], (30, 20, 20, 20)):
            arm["budget"] = {"max_completers": cap}
        data["analysis"] = {
            "outcomes": [{"id": "learning", "measure": "post", "role": "primary", "alternative": "greater"},
                         {"id": "attitude", "measure": "attitude", "role": "secondary", "confirmatory": True,
                          "alternative": "less"}],
            "scales": [{"id": "attitude", "items": ["q_understand", "q_trust"], "scoring": "sum",
                        "reverse": ["q_trust"]}],
            "covariates": ["pre", "form_order"],
            "contrasts": [["agentic", "static"], ["agentic", "chat"]],
            "correction": "bonferroni", "alpha": 0.025,
            "exclusions": {"attention_items": ["q_attention"]},
        }

    study = study_file_read(study_folder(edit))
    text = prereg_markdown(spec=study.spec, number=3, sha256=study.sha256, generated_on=datetime.date(2026, 1, 2))
    assert "| H1 | `learning` | `post` | agentic − static > 0 | greater, α = 0.025, Bonferroni over 4 |" in text
    assert "| H4 | `attitude` | `attitude` | agentic − chat < 0 | less, α = 0.025, Bonferroni over 4 |" in text
    assert "confirmatory (secondary)" in text
    assert "scale: the sum of items q_understand, q_trust; reverse-keyed (scored min + max − answer): q_trust" in text
    assert "Cronbach's α" in text
    assert "- `form_order`: the order of the two parallel test forms (AB or BA)\n" in text
    assert "attention check `q_attention` (“Please choose *blue*.”)" in text
    assert "less than" not in text  # no minimum time
    assert "agentic 20" in text and "**90** in all" in text
    assert 'Y ~ C(arm, Treatment("static")) + pre + form_order' in text
    assert "classical (homoscedastic) standard errors" in text
    assert "Generated by Teachback on 2026-01-02 from version 3" in text
    page = prereg_html(markdown=text, title="Preregistration")
    assert "<em>blue</em>" in page
    _no_external_resource(page)


def test_a_covariate_measured_after_the_explanation_is_marked(study_folder):
    def edit(data):
        data["analysis"] = {"outcomes": [{"id": "learning", "measure": "post", "role": "primary"}],
                            "covariates": ["pre", "q_trust"]}

    study = study_file_read(study_folder(edit))
    text = prereg_markdown(spec=study.spec, number=1, sha256=study.sha256)
    pre, trust = (line for line in text.splitlines() if line.startswith(("- `pre`", "- `q_trust`")))
    assert "not a baseline covariate" not in pre
    assert "not a baseline covariate" in trust

"""The report's plots stay inside their axes, and every interval of a proportion stays inside [0, 1].

The plots are drawn from hand-made frames whose t-intervals pass the axis range (two participants, gains
far apart) and whose proportions are 0 of n and n of n; the SVG is parsed with xml.etree and every data
mark's coordinates are checked against its plot box (`data-box` on the marks' group), every other element
against the canvas. The interval functions are checked against the formulas worked by hand.
"""
import math
import re
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from analysis import report as R
from analysis import stats as S

Z = 1.959963984540054  # Φ⁻¹(0.975)
SVG_NS = "{http://www.w3.org/2000/svg}"


# --- reading an SVG back ---------------------------------------------------------------------------------


def _label(el) -> str:
    return (el.text or "") + "".join(child.tail or "" for child in el)


def _extent(el) -> list[tuple[float, float]]:
    """The corners of what an element paints (text: estimated from its length and font size)."""
    tag = el.tag.replace(SVG_NS, "")
    a = {k: v for k, v in el.attrib.items()}
    f = lambda k: float(a[k])  # noqa: E731
    if tag == "circle":
        return [(f("cx") - f("r"), f("cy") - f("r")), (f("cx") + f("r"), f("cy") + f("r"))]
    if tag == "line":
        return [(f("x1"), f("y1")), (f("x2"), f("y2"))]
    if tag in ("polyline", "polygon"):
        return [tuple(map(float, p.split(","))) for p in a["points"].split()]
    if tag == "rect":
        return [(f("x"), f("y")), (f("x") + f("width"), f("y") + f("height"))]
    if tag == "text":
        size, width = f("font-size"), len(_label(el)) * f("font-size") * 0.6
        x, y = f("x"), f("y")
        start = {"start": x, "middle": x - width / 2, "end": x - width}[a.get("text-anchor", "start")]
        if "rotate(-90" in a.get("transform", ""):  # runs upwards, centred on (x, y)
            return [(x - size, y - width / 2), (x + size * 0.3, y + width / 2)]
        return [(start, y - size), (start + width, y + size * 0.3)]
    return []


def _inside(points, box, what) -> None:
    x0, y0, x1, y1 = box
    for x, y in points:
        assert x0 - 0.5 <= x <= x1 + 0.5 and y0 - 0.5 <= y <= y1 + 0.5, (what, (x, y), box)


def check_svg(svg: str) -> dict:
    """Assert every mark is in its plot box and everything is on the canvas; return what was found."""
    root = ET.fromstring(svg)
    _, _, width, height = map(float, root.attrib["viewBox"].split())
    canvas = (0.0, 0.0, width, height)
    found = {"marks": 0, "clipped": 0, "boxes": 0}
    for el in root.iter():
        _inside(_extent(el), canvas, ET.tostring(el)[:120])
    for group in root.iter(f"{SVG_NS}g"):
        if group.attrib.get("data-role") != "marks":
            continue
        box = tuple(map(float, group.attrib["data-box"].split()))
        found["boxes"] += 1
        found["clipped"] += int(group.attrib["data-clipped"])
        for el in group.iter():
            if el is group:
                continue
            _inside(_extent(el), box, ET.tostring(el)[:120])
            found["marks"] += 1
    return found


def _interval_lines(svg: str) -> list[tuple[float, float, float]]:
    """Vertical marks (x, y_top, y_bottom) of the marks group."""
    root = ET.fromstring(svg)
    out = []
    for group in root.iter(f"{SVG_NS}g"):
        if group.attrib.get("data-role") == "marks":
            for el in group.iter(f"{SVG_NS}line"):
                x1, x2 = float(el.attrib["x1"]), float(el.attrib["x2"])
                y1, y2 = float(el.attrib["y1"]), float(el.attrib["y2"])
                if x1 == x2 and y1 != y2:
                    out.append((x1, min(y1, y2), max(y1, y2)))
    return out


def _measures(gains: dict[str, list[float]], **columns) -> pd.DataFrame:
    rows = []
    for arm, values in gains.items():
        for i, g in enumerate(values):
            rows.append({"pseudonym": f"p_{arm}_{i}", "arm": arm, "gain": g})
    frame = pd.DataFrame(rows)
    for name, values in columns.items():
        frame[name] = values
    return frame


# --- the plots --------------------------------------------------------------------------------------------


def test_a_mean_gain_interval_that_passes_the_axis_is_clipped_with_an_arrow_inside_the_plot_box():
    measures = _measures({"two_far_apart": [0.1, 0.9], "at_the_floor": [-1.0, -1.0, -0.95],
                          "one": [0.4], "spread": [-0.8, 0.9, 0.0, 1.0]})
    arms = [*measures["arm"].unique(), "nobody"]
    n, m, lo, hi = R.mean_ci(measures.loc[measures["arm"] == "two_far_apart", "gain"])
    assert n == 2 and hi > 1 and lo < -1  # a t-interval on 1 df: far past what a mean gain can be
    svg = R.mean_gain_svg(measures, arms)
    found = check_svg(svg)
    assert found["boxes"] == 1 and found["marks"] > 10
    assert found["clipped"] >= 2 and svg.count("data-clipped=\"high\"") >= 1 and svg.count("data-clipped=\"low\"") >= 1
    assert "nobody: no data" in svg


def test_the_gain_strip_keeps_points_at_minus_one_and_one_inside_the_box():
    measures = _measures({"static": [-1.0, -1.0, 1.0, 0.0], "tutor": [1.0] * 6,
                          "an_arm_with_a_very_long_name_" * 3: [0.5]})
    found = check_svg(R.gain_strip_svg(measures, list(measures["arm"].unique())))
    assert found["marks"] > 10


def _predict_answers(arm_answers: dict[str, list[tuple[int, bool]]]):
    """responses and measures frames with post-test predict answers (confidence, correct) per arm."""
    rows, people = [], []
    for arm, answers in arm_answers.items():
        people.append({"pseudonym": f"p_{arm}", "arm": arm})
        for k, (confidence, correct) in enumerate(answers):
            rows.append({"pseudonym": f"p_{arm}", "phase": "post_test", "item_kind": "predict", "item_id": f"i{k}",
                         "confidence": confidence, "correct": correct, "score": float(correct)})
    return pd.DataFrame(rows), pd.DataFrame(people)


def test_calibration_bins_of_0_of_n_and_n_of_n_have_wilson_intervals_inside_0_1_and_the_box():
    responses, measures = _predict_answers({
        "static": [(95, False)] * 10 + [(5, True)] * 10,   # 0 of 10 right when sure, 10 of 10 when not
        "tutor": [(55, True), (55, False), (100, True)],
    })
    rows = R.calibration_table(responses, measures, ["static", "tutor"])
    by = {(r["arm"], r["bin"]): r for r in rows}
    assert by[("static", 9)]["accuracy"] == 0.0 and by[("static", 0)]["accuracy"] == 1.0
    assert by[("static", 9)]["ci_low"] == 0.0 and by[("static", 9)]["ci_high"] == pytest.approx(0.2775, abs=5e-5)
    assert by[("static", 0)]["ci_high"] == 1.0 and by[("static", 0)]["ci_low"] == pytest.approx(0.7225, abs=5e-5)
    for r in rows:
        assert 0.0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1.0
    svg = R.calibration_svg(rows, ["static", "tutor"])
    found = check_svg(svg)
    assert found["clipped"] == 0  # a proportion's interval never needs cutting on a 0–1 axis
    assert len(_interval_lines(svg)) >= len(rows)


def test_the_flow_diagram_stays_on_its_canvas_and_says_no_count_as_0_of_0():
    flow = {"entered": 0, "consented": 0, "declined": 0, "no_decision": 0, "not_allocated": 0, "allocated": 0,
            "arms": {arm: dict.fromkeys(("allocated", "pre_test", "explanation", "post_test", "completed",
                                         "withdrawn", "active"), 0)
                     for arm in ("static", "a_very_long_arm_identifier_of_sixty_characters_or_so_xxxxxxx")}}
    svg = R.flow_svg(flow, list(flow["arms"]))
    check_svg(svg)
    assert "0 / 0" not in svg and "withdrawn 0" not in svg and "Did not consent" in svg


# --- the numbers: intervals of proportions ----------------------------------------------------------------


def _wilson_by_hand(x, n):
    p = x / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z / (1 + Z ** 2 / n) * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2))
    return centre - half, centre + half


@pytest.mark.parametrize("x, n", [(0, 10), (10, 10), (1, 10), (7, 23), (50, 100), (1, 1)])
def test_wilson_matches_the_formula_worked_by_hand(x, n):
    low, high = S.wilson_interval(x, n)
    want_low, want_high = _wilson_by_hand(x, n)
    assert low == pytest.approx(max(0.0, want_low), abs=1e-12) and high == pytest.approx(min(1.0, want_high), abs=1e-12)
    assert 0.0 <= low <= x / n <= high <= 1.0


def test_wilson_of_0_of_10_is_0_to_0_2775_and_of_10_of_10_its_mirror():
    assert S.wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert S.wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    assert all(math.isnan(v) for v in S.wilson_interval(0, 0))  # no "interval of 0 of 0"
    with pytest.raises(ValueError):
        S.wilson_interval(11, 10)


def test_newcombe_matches_newcombe_1998_and_stays_in_minus_one_one():
    # Newcombe (1998), Statistics in Medicine 17:873, table II: 56/70 − 48/80 → [0.0524, 0.3339]
    low, high = S.newcombe_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0524, abs=5e-5) and high == pytest.approx(0.3339, abs=5e-5)
    # worked by hand from the two Wilson intervals
    l1, u1 = _wilson_by_hand(9, 10)
    l2, u2 = _wilson_by_hand(3, 10)
    d = 0.9 - 0.3
    assert S.newcombe_interval(9, 10, 3, 10) == (pytest.approx(d - math.hypot(0.9 - l1, u2 - 0.3)),
                                                 pytest.approx(d + math.hypot(u1 - 0.9, 0.3 - l2)))
    for x1, n1, x2, n2 in [(10, 10, 0, 10), (0, 5, 5, 5), (0, 3, 0, 3)]:
        low, high = S.newcombe_interval(x1, n1, x2, n2)
        assert -1.0 <= low <= x1 / n1 - x2 / n2 <= high <= 1.0


def test_the_wilson_interval_of_a_mean_score_is_wilson_on_0_1_scores_and_stays_in_0_1():
    assert S.wilson_mean_interval([0] * 10)[2:] == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert S.wilson_mean_interval([1] * 10)[2:] == (pytest.approx(0.72247, abs=1e-5), 1.0)
    n, m, low, high = S.wilson_mean_interval([1, 0, 1, 1, 0, 1, 1])
    assert (n, m) == (7, 5 / 7) and (low, high) == pytest.approx(S.wilson_interval(5, 7))
    # fractional scores with little spread: the effective n grows past the participants, up to the answers
    n, m, low, high = S.wilson_mean_interval([0.6, 0.8, 0.6, 0.8, 0.6, 0.8], max_n=30)
    p, var = 0.7, pd.Series([0.6, 0.8] * 3).var()
    n_eff = min(p * (1 - p) / (var / 6), 30)
    assert (low, high) == pytest.approx(S.wilson_interval(p * n_eff, n_eff))
    assert high - low < S.wilson_interval(0.7 * 6, 6)[1] - S.wilson_interval(0.7 * 6, 6)[0]
    # the t-interval of the same three scores leaves [0, 1]; Wilson's does not
    _, _, t_low, t_high = R.mean_ci([1, 1, 0.5])
    _, _, w_low, w_high = S.wilson_mean_interval([1, 1, 0.5], max_n=15)
    assert t_high > 1 and 0 <= w_low <= w_high <= 1


def test_the_measures_table_gives_proportions_wilson_intervals_inside_0_1():
    measures = _measures({"static": [0.0] * 10, "tutor": [1.0, 0.0, 0.5]},
                         pre=[0.0] * 10 + [0.0, 1.0, 0.5], post=[0.0] * 10 + [1.0, 1.0, 1.0],
                         forward_sim_accuracy=[0.0] * 10 + [1.0, 1.0, 0.0])
    for column in ("normalized_gain", "brier", "ece", "time_on_task_s", "turns", "tokens", "cost_usd",
                   "lm_accuracy", "lm_brier"):
        measures[column] = float("nan")
    answers = {("static", "pre"): 50, ("static", "post"): 50, ("tutor", "pre"): 15, ("tutor", "post"): 15}
    rows = {r["measure"]: r for r in R.measure_rows(measures, ["static", "tutor"], answers)}
    for measure in ("pre", "post", "forward_sim_accuracy"):
        assert rows[measure]["interval"] == "Wilson"
        for cell in rows[measure]["cells"]:
            assert 0.0 <= cell["ci_low"] <= cell["ci_high"] <= 1.0, (measure, cell)
    static_pre = rows["pre"]["cells"][0]
    assert static_pre["ci_low"] == 0.0 and static_pre["ci_high"] == pytest.approx(S.wilson_interval(0, 50)[1])
    static_fsa = rows["forward_sim_accuracy"]["cells"][0]  # no answer count given: 0 of 10 participants
    assert static_fsa["ci"] == "[0.000, 0.278]"
    assert rows["gain"]["interval"] == "t"


def test_completion_rates_use_wilson_their_differences_newcombe_and_no_sentence_says_0_of_0():
    zeros = dict.fromkeys(("pre_test", "explanation", "post_test", "withdrawn", "active"), 0)
    flow = {"arms": {"none_done": {**zeros, "allocated": 10, "completed": 0},
                     "all_done": {**zeros, "allocated": 10, "completed": 10},
                     "empty": {**zeros, "allocated": 0, "completed": 0},
                     "one": {**zeros, "allocated": 1, "completed": 1}}}
    result = R.completion(flow, list(flow["arms"]))
    rows = {r["arm"]: r for r in result["rows"]}
    assert rows["none_done"]["ci"] == "[0.000, 0.278]" and rows["all_done"]["ci"] == "[0.722, 1.000]"
    assert rows["empty"]["ci"] == "—" and rows["empty"]["rate"] == "—"
    sentences = [r["sentence"] for r in result["rows"]]
    assert sentences == ["none of the 10 completed", "all 10 completed", "nobody allocated yet",
                         "the one participant completed"]
    assert not any(re.search(r"\b0 of 0\b", s) for s in sentences)
    assert R._completed_sentence(3, 4) == "3 of 4 completed"
    pairs = {p["pair"]: p for p in result["pairs"]}
    assert "none_done − empty" not in pairs  # no difference with an arm nobody is in
    low, high = S.newcombe_interval(0, 10, 10, 10)
    assert pairs["none_done − all_done"]["ci_low"] == low and -1.0 <= low < high <= 1.0


# --- the whole report of a launched study -----------------------------------------------------------------


def _static_and_tutor(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("tutor", "static")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2


@pytest.mark.django_db
def test_every_plot_of_a_real_report_is_inside_its_box_and_every_proportion_interval_in_0_1(
        launch, enter, step_through, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(_static_and_tutor)
    for n, policy in enumerate(["key", "key", "accuracy:0", "accuracy:0", "accuracy:0.5"]):
        client, _ = enter(version, pid=f"PIDBOUNDS0000000000000000{n}")
        step_through(client, version, times=1 + 5 + 1 + 5 + 3 + 1, policy=policy)
    page = R.report_html(slug=version.study.slug)
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) == 4  # flow, gain strip, mean gain, calibration
    for svg in svgs:
        check_svg(svg)
    for measure in R.BOUNDED_MEASURES:
        for low, high in re.findall(rf'data-measure="{measure}" data-stat="ci">\[(-?[\d.]+), (-?[\d.]+)\]<', page):
            assert 0.0 <= float(low) <= float(high) <= 1.0, (measure, low, high)
    for low, high in re.findall(r'data-completion="ci">\[(-?[\d.]+), (-?[\d.]+)\]<', page):
        assert 0.0 <= float(low) <= float(high) <= 1.0
    assert not re.search(r"\b0 of 0\b", page) and "0 / 0" not in page
    assert "the study has no simulated participants" in page and "Wilson" in page

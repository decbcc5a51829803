"""Per-participant measures of a study, computed from the export's tidy frames.

Pandas in, pandas out: no ORM, no Django. Every function takes the frames described in
docs/analysis.md (`participants`, `responses`, `turns`, `llm_calls`, `predictions`) and returns a
new DataFrame; the inputs are never modified.

Conventions used throughout:

- An *analysable* participant has `status == "completed"`; simulated participants (`is_simulated`)
  are left out unless `include_simulated=True`.
- A *scored* response has a non-missing `score` (questionnaire answers and free text carry NaN).
- A response's *outcome* y is `correct` as 0/1; where `correct` is missing, `score` stands in.
- Means over an empty set are NaN, never 0: a participant who saw no predict item has no
  forward-simulation accuracy, not an accuracy of zero.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PRE, POST = "pre_test", "post_test"
PREDICT = "predict"
ECE_BINS = 10

#: The numeric measure columns of `participant_measures`, in output order.
MEASURES = [
    "pre", "post", "gain", "normalized_gain",
    "forward_sim_accuracy", "brier", "ece",
    "time_on_task_s", "turns", "tokens", "cost_usd",
    "lm_accuracy", "lm_brier",
]


def _as_float(values: pd.Series) -> pd.Series:
    """Return `values` (bool, boolean with NA, numbers, or objects) as float64 with NaN for missing."""
    out = [np.nan if pd.isna(v) else float(v) for v in values]
    return pd.Series(np.asarray(out, dtype=float), index=values.index)


def _analysable(participants: pd.DataFrame, include_simulated: bool) -> pd.DataFrame:
    """Return the completed (and, by default, real) participants."""
    keep = participants["status"].astype(str) == "completed"
    if not include_simulated and "is_simulated" in participants:
        keep &= ~participants["is_simulated"].fillna(False).astype(bool)
    return participants.loc[keep].reset_index(drop=True)


def _with_outcome(responses: pd.DataFrame) -> pd.DataFrame:
    """Return `responses` with float columns `score`, `y` (outcome 0/1) and `confidence`."""
    score = _as_float(responses["score"])
    y = _as_float(responses["correct"]) if "correct" in responses else pd.Series(np.nan, index=responses.index)
    conf = _as_float(responses["confidence"]) if "confidence" in responses else pd.Series(np.nan, index=responses.index)
    return responses.assign(score=score, y=y.fillna(score), confidence=conf)


def ece(confidence: pd.Series, correct: pd.Series, bins: int = ECE_BINS) -> float:
    """Return the expected calibration error of `confidence` (0–100) against `correct` (0/1).

    ECE = Σ_b (n_b / N) · |acc_b − conf_b|, over `bins` equal-width bins of confidence/100:
    bin b holds [b/B, (b+1)/B), the last bin also holds 1.0; acc_b is the mean outcome and conf_b the
    mean confidence/100 in the bin; empty bins contribute nothing. The bin is computed from the
    0–100 value (floor(c·B/100)) so integer confidences such as 30 fall in bin 3, not bin 2 by a
    rounding error. Pairs with a missing value are dropped; NaN when none are left.
    """
    c = _as_float(pd.Series(confidence)).to_numpy()
    y = _as_float(pd.Series(correct)).to_numpy()
    ok = ~(np.isnan(c) | np.isnan(y))
    c, y = c[ok], y[ok]
    if c.size == 0:
        return float("nan")
    b = np.clip(np.floor(c * bins / 100.0), 0, bins - 1).astype(int)
    total = 0.0
    for k in np.unique(b):
        in_bin = b == k
        total += in_bin.sum() / c.size * abs(y[in_bin].mean() - c[in_bin].mean() / 100.0)
    return float(total)


def _phase_means(scored: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Return mean score per `keys` with one column per phase (`pre`, `post`)."""
    table = (
        scored[scored["phase"].isin([PRE, POST])]
        .groupby(keys + ["phase"], observed=True)["score"].mean()
        .unstack("phase")
    )
    table = table.reindex(columns=[PRE, POST])
    table.columns = ["pre", "post"]
    return table.reset_index()


def normalized_gain(pre, post):
    """Return Hake's normalized gain g = (post − pre) / (1 − pre), elementwise.

    Scores are proportions in [0, 1]. At pre = 1 there is no room to gain and g is undefined:
    the result is NaN (not 0, not ±inf), so such participants drop out of means of g. g is
    bounded above by 1 and unbounded below (a participant at pre = 0.9 who falls to 0 has g = −9).
    """
    pre = np.asarray(pre, dtype=float)
    post = np.asarray(post, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (post - pre) / (1.0 - pre)
    return np.where(pre >= 1.0, np.nan, g)


def participant_measures(
    participants: pd.DataFrame,
    responses: pd.DataFrame,
    turns: pd.DataFrame | None = None,
    llm_calls: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
    include_simulated: bool = False,
    everyone: bool = False,
) -> pd.DataFrame:
    """Return one row per analysable participant: identifiers and the measures in `MEASURES`.

    `everyone=True` keeps every row of `participants` instead, whatever its status or flags (the
    export's wide table): each measure is computed from what the participant has, so someone who
    left after the pre-test has `pre` and no `post`, and `time_on_task_s` is NaN without completed_at.

    Columns (scores are proportions in [0, 1]):

    - `pseudonym`, `arm`, `form_order`.
    - `pre`, `post`: mean `score` over the scored items of the pre-test / post-test.
    - `gain` = post − pre.
    - `normalized_gain` = (post − pre) / (1 − pre); NaN at pre = 1 (see `normalized_gain`).
    - `forward_sim_accuracy`: mean outcome y over the post-test items of kind `predict`.
    - `brier` = mean of (confidence/100 − y)² over post-test predict items with a confidence.
    - `ece`: expected calibration error of those same items, 10 equal-width bins (see `ece`).
    - `time_on_task_s` = (completed_at − started_at) in seconds.
    - `turns`: number of turns with author "participant".
    - `tokens` = Σ (input_tokens + output_tokens) and `cost_usd` = Σ cost_usd over the
      participant's LLM calls, whatever their status (failed attempts are billed too); `cost_usd` is
      NaN (unknown, never 0) when a call that used tokens has no price (the arm's model has none).
    - `lm_accuracy`: share of post-test items where the explainer's prediction, read as
      "correct" when predicted_correct ≥ 0.5, matches the real outcome y.
    - `lm_brier` = mean of (predicted_correct − y)² over those items.

    `turns` and `tokens`/`cost_usd` are 0 for a participant with no rows in a frame that was
    given, and NaN when the frame was not given; `lm_*` are NaN without `predictions` or without a
    matching post-test answer. Predictions for items the participant did not answer are ignored.
    """
    people = participants.reset_index(drop=True) if everyone else _analysable(participants, include_simulated)
    out = people[["pseudonym", "arm", "form_order"]].copy()
    resp = _with_outcome(responses[responses["pseudonym"].isin(out["pseudonym"])])

    scored = resp[resp["score"].notna()]
    out = out.merge(_phase_means(scored, ["pseudonym"]), on="pseudonym", how="left")
    out["gain"] = out["post"] - out["pre"]
    out["normalized_gain"] = normalized_gain(out["pre"], out["post"])

    predict = resp[(resp["phase"] == POST) & (resp["item_kind"].astype(str) == PREDICT) & resp["y"].notna()]
    fsa = predict.groupby("pseudonym")["y"].mean().rename("forward_sim_accuracy")
    rated = predict[predict["confidence"].notna()]
    brier = (
        rated.assign(sq=(rated["confidence"] / 100.0 - rated["y"]) ** 2)
        .groupby("pseudonym")["sq"].mean().rename("brier")
    )
    ece_by = pd.Series(
        {p: ece(g["confidence"], g["y"]) for p, g in rated.groupby("pseudonym")}, name="ece", dtype=float,
        index=brier.index,  # the same people, and a string index even when nobody has rated yet (merge needs it)
    )
    for series in (fsa, brier, ece_by):
        out = out.merge(series.rename_axis("pseudonym").reset_index(), on="pseudonym", how="left")

    started = pd.to_datetime(people["started_at"], utc=True)
    completed = pd.to_datetime(people["completed_at"], utc=True)
    out["time_on_task_s"] = (completed - started).dt.total_seconds().to_numpy()

    if turns is not None:
        mine = turns[turns["author"].astype(str) == "participant"]
        counts = mine.groupby("pseudonym").size()
        out["turns"] = out["pseudonym"].map(counts).fillna(0).astype(float)
    else:
        out["turns"] = np.nan

    if llm_calls is not None:
        tokens = _as_float(llm_calls["input_tokens"]).fillna(0) + _as_float(llm_calls["output_tokens"]).fillna(0)
        cost = _as_float(llm_calls["cost_usd"])
        calls = llm_calls.assign(tokens=tokens, cost_usd=cost.fillna(0),
                                 unpriced=(cost.isna() & (tokens > 0)).astype(int))  # used tokens, no price
        sums = calls.groupby("pseudonym")[["tokens", "cost_usd", "unpriced"]].sum()
        out["tokens"] = out["pseudonym"].map(sums["tokens"]).fillna(0.0)
        out["cost_usd"] = out["pseudonym"].map(sums["cost_usd"].where(sums["unpriced"] == 0)).where(
            out["pseudonym"].isin(sums.index), 0.0)
    else:
        out["tokens"] = np.nan
        out["cost_usd"] = np.nan

    out["lm_accuracy"] = np.nan
    out["lm_brier"] = np.nan
    if predictions is not None and len(predictions):
        fidelity = learner_model_fidelity(resp, predictions)
        out["lm_accuracy"] = out["pseudonym"].map(fidelity["lm_accuracy"]).astype(float)
        out["lm_brier"] = out["pseudonym"].map(fidelity["lm_brier"]).astype(float)

    return out[["pseudonym", "arm", "form_order", *MEASURES]]


def learner_model_fidelity(responses: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Return `lm_accuracy` and `lm_brier` per pseudonym (index), from predictions vs post-test answers.

    p = predicted_correct as a probability (True → 1, False → 0); y = the real post-test outcome
    of the same item. lm_accuracy = mean[(p ≥ 0.5) == y]; lm_brier = mean[(p − y)²]. Items with no
    scored post-test answer, or no prediction, are skipped. `predicted_answer` is not used: the
    export scores answers, and only correctness is compared.
    """
    resp = responses if "y" in responses else _with_outcome(responses)
    post = resp.loc[(resp["phase"] == POST) & resp["y"].notna(), ["pseudonym", "item_id", "y"]]
    pred = predictions[["pseudonym", "item_id"]].assign(p=_as_float(predictions["predicted_correct"]))
    both = pred[pred["p"].notna()].merge(post, on=["pseudonym", "item_id"], how="inner")
    both = both.assign(hit=((both["p"] >= 0.5).astype(float) == both["y"]).astype(float), sq=(both["p"] - both["y"]) ** 2)
    table = both.groupby("pseudonym")[["hit", "sq"]].mean()
    return table.rename(columns={"hit": "lm_accuracy", "sq": "lm_brier"})


def concept_gains(
    participants: pd.DataFrame, responses: pd.DataFrame, include_simulated: bool = False,
) -> pd.DataFrame:
    """Return a long frame: pseudonym, arm, concept, pre, post, gain.

    pre / post = mean score over the participant's scored items of that concept in the pre-test /
    post-test; gain = post − pre (NaN when the concept was not tested in both phases). Items with
    an empty or missing concept are left out. Analysable participants only (as `participant_measures`).
    """
    people = _analysable(participants, include_simulated)[["pseudonym", "arm"]]
    resp = _with_outcome(responses[responses["pseudonym"].isin(people["pseudonym"])])
    concept = resp["concept"].astype("string").str.strip()
    resp = resp.assign(concept=concept)
    scored = resp[resp["score"].notna() & resp["concept"].notna() & (resp["concept"] != "")]
    table = _phase_means(scored, ["pseudonym", "concept"])
    table["gain"] = table["post"] - table["pre"]
    table = people.merge(table, on="pseudonym", how="inner")
    return table.sort_values(["pseudonym", "concept"]).reset_index(drop=True)[
        ["pseudonym", "arm", "concept", "pre", "post", "gain"]
    ]


def item_responses(
    participants: pd.DataFrame, responses: pd.DataFrame, include_simulated: bool = False,
) -> pd.DataFrame:
    """Return the scored pre/post-test answers of analysable participants, one row per answer.

    Columns: pseudonym, arm, form_order, phase, item_id, item_kind, concept, correct (0/1 float,
    the outcome y). This is the input of `analysis.stats.item_level_model`.
    """
    people = _analysable(participants, include_simulated)[["pseudonym", "arm", "form_order"]]
    resp = _with_outcome(responses)
    resp = resp[resp["phase"].isin([PRE, POST]) & resp["y"].notna()]
    cols = ["pseudonym", "phase", "item_id", "item_kind", "concept", "y"]
    long = people.merge(resp[[c for c in cols if c in resp]], on="pseudonym", how="inner")
    return long.rename(columns={"y": "correct"}).reset_index(drop=True)


def arm_summary(measures: pd.DataFrame, group: str = "arm") -> pd.DataFrame:
    """Return one row per arm and measure: arm, measure, n, mean, sd, median.

    n counts the participants with a non-missing value of that measure (so it can differ between
    measures, e.g. normalized_gain drops pre = 1); sd is the sample SD (ddof = 1, NaN for n < 2).
    The mean of `normalized_gain` is the mean of individual gains, which is not Hake's class-level
    g computed from the mean pre and post scores.
    """
    present = [m for m in MEASURES if m in measures]
    long = measures.melt(id_vars=[group], value_vars=present, var_name="measure", value_name="value")
    long = long.assign(value=pd.to_numeric(long["value"], errors="coerce"))
    table = (
        long.groupby([group, "measure"], sort=False)["value"]
        .agg(n="count", mean="mean", sd="std", median="median")
        .reset_index()
    )
    order = {m: i for i, m in enumerate(present)}
    table = table.assign(_o=table["measure"].map(order)).sort_values([group, "_o"]).drop(columns="_o")
    return table.reset_index(drop=True)

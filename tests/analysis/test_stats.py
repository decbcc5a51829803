"""Statistics against textbook formulas, hand-solved normal equations and a second library.

No expected value here comes from the function under test: each is computed by hand (numpy
arithmetic, an explicit formula), by scipy / scikit-learn, or written as a printed number.
"""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression

from analysis.stats import (
    adjust_p, ancova, hedges_g, item_level_model, kruskal, pairwise, power_next_study, welch_t,
)


def holm_by_hand(p):
    """Holm's step-down, written out: sort, multiply by m - i, running max, cap at 1, unsort."""
    p = list(p)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def two_arms(a, b, outcome="gain"):
    return pd.DataFrame({"arm": ["chat"] * len(a) + ["static"] * len(b), outcome: list(a) + list(b)})


# --- multiplicity ---

def test_holm_on_the_textbook_example():
    assert adjust_p([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_matches_a_hand_coded_step_down():
    p = [0.001, 0.2, 0.012, 0.049, 0.03, 0.6]
    assert adjust_p(p) == pytest.approx(holm_by_hand(p))


# --- Welch ---

def test_welch_t_against_hand_formula_and_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    got = welch_t(two_arms(a, b), "chat", "static")
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 5  # 1.6667/4, 10/5
    se = math.sqrt(va + vb)
    t = (2.5 - 6.0) / se
    dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    half = sps.t.ppf(0.975, dof) * se
    assert got["t"] == pytest.approx(t) and got["t"] == pytest.approx(-2.2514, abs=1e-4)
    assert got["df"] == pytest.approx(dof) and got["df"] == pytest.approx(5.5208, abs=1e-4)
    assert got["mean_diff"] == pytest.approx(-3.5)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((-3.5 - half, -3.5 + half))
    reference = sps.ttest_ind(a, b, equal_var=False)
    assert got["t"] == pytest.approx(reference.statistic)
    assert got["p"] == pytest.approx(reference.pvalue)
    assert got["p"] == pytest.approx(2 * sps.t.sf(abs(t), dof))


# --- Hedges' g ---

def test_hedges_g_against_the_textbook_formula():
    # Two groups of 10: means 28 and 24, sums of squares 70 and 60, s_p = sqrt(130/18) = 2.6874,
    # d = 1.4884, g = 1.4884 * 68/71 = 1.4255.
    a = [24, 27, 29, 31, 25, 30, 28, 26, 33, 27]
    b = [22, 25, 23, 28, 24, 21, 26, 24, 27, 20]
    m1, m2 = sum(a) / 10, sum(b) / 10  # 28.0, 24.0
    s1 = sum((x - m1) ** 2 for x in a) / 9
    s2 = sum((x - m2) ** 2 for x in b) / 9
    s_pooled = math.sqrt((9 * s1 + 9 * s2) / 18)
    d = (m1 - m2) / s_pooled
    j = 1 - 3 / (4 * (10 + 10) - 9)  # 68/71
    got = hedges_g(a, b, n_boot=0)
    assert got["d"] == pytest.approx(d)
    assert got["J"] == pytest.approx(68 / 71)
    assert got["g"] == pytest.approx(j * d)
    assert got["g"] == pytest.approx(1.4255, abs=1e-4)


def test_hedges_g_bootstrap_interval_is_reproducible_contains_g_and_agrees_with_scipy():
    rng = np.random.default_rng(42)
    a, b = rng.normal(0.6, 1, 30), rng.normal(0.0, 1, 25)
    first, again = hedges_g(a, b, n_boot=2000, seed=7), hedges_g(a, b, n_boot=2000, seed=7)
    other = hedges_g(a, b, n_boot=2000, seed=8)
    assert (first["ci_low"], first["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert (first["ci_low"], first["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert first["ci_low"] < first["g"] < first["ci_high"]
    assert first["n_boot_used"] == 2000

    def g_stat(x, y, axis=-1):
        nx, ny = x.shape[axis], y.shape[axis]
        sp = np.sqrt(((nx - 1) * x.var(axis=axis, ddof=1) + (ny - 1) * y.var(axis=axis, ddof=1)) / (nx + ny - 2))
        return (1 - 3 / (4 * (nx + ny) - 9)) * (x.mean(axis=axis) - y.mean(axis=axis)) / sp

    scipy_ci = sps.bootstrap((a, b), g_stat, method="percentile", n_resamples=4000,
                             rng=np.random.default_rng(1)).confidence_interval
    assert first["ci_low"] == pytest.approx(scipy_ci.low, abs=0.08)
    assert first["ci_high"] == pytest.approx(scipy_ci.high, abs=0.08)


# --- pairwise ---

def test_pairwise_welch_holm_and_g_against_scipy_and_hand():
    groups = {
        "agentic": [0.5, 0.7, 0.6, 0.9, 0.4, 0.8],
        "chat": [0.3, 0.5, 0.2, 0.6, 0.4],
        "static": [0.1, 0.0, 0.3, 0.2, 0.25, 0.15, 0.05],
    }
    df = pd.DataFrame([{"arm": k, "gain": v} for k, vs in groups.items() for v in vs])
    got = pairwise(df, n_boot=200)
    assert list(zip(got["a"], got["b"])) == [("agentic", "chat"), ("agentic", "static"), ("chat", "static")]
    raw = [sps.ttest_ind(groups[a], groups[b], equal_var=False).pvalue for a, b in zip(got["a"], got["b"])]
    assert list(got["p"]) == pytest.approx(raw)
    assert list(got["p_adj"]) == pytest.approx(holm_by_hand(raw))
    x, y = np.array(groups["agentic"]), np.array(groups["chat"])
    sp = math.sqrt((5 * x.var(ddof=1) + 4 * y.var(ddof=1)) / 9)
    assert got.loc[0, "g"] == pytest.approx((1 - 3 / (4 * 11 - 9)) * (x.mean() - y.mean()) / sp)


# --- Kruskal-Wallis ---

def test_kruskal_h_against_hand_formula_and_scipy():
    # Values 1..12 with no ties, so a value is its own rank. R = 9, 24, 45.
    groups = {"a": [1, 3, 5], "b": [2, 6, 7, 9], "c": [4, 8, 10, 11, 12]}
    df = pd.DataFrame([{"arm": k, "gain": v} for k, vs in groups.items() for v in vs])
    got = kruskal(df, "gain", "arm")
    h = 12 / (12 * 13) * (9**2 / 3 + 24**2 / 4 + 45**2 / 5) - 3 * 13
    assert got["H"] == pytest.approx(h) and got["H"] == pytest.approx(5.3077, abs=1e-4)
    assert got["H"] == pytest.approx(sps.kruskal(*groups.values()).statistic)
    assert got["df"] == 2
    assert got["p"] == pytest.approx(math.exp(-h / 2))  # chi-square survival with 2 df
    assert got["epsilon_squared"] == pytest.approx(h / 11)


def exact_mann_whitney(x, y):
    """U of x and the exact two-sided p by enumerating every split of the pooled ranks."""
    u = sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y)
    pooled = list(x) + list(y)
    us = []
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        xs = [pooled[i] for i in idx]
        ys = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(sum(a > b for a in xs for b in ys))
    n = len(us)
    centre = len(x) * len(y) / 2
    p = sum(abs(v - centre) >= abs(u - centre) for v in us) / n
    return u, min(1.0, p)


def test_mann_whitney_follow_ups_against_enumeration_and_hand_holm():
    groups = {"a": [1, 3, 5], "b": [2, 6, 7, 9], "c": [4, 8, 10, 11, 12]}
    df = pd.DataFrame([{"arm": k, "gain": v} for k, vs in groups.items() for v in vs])
    pairs = kruskal(df, "gain", "arm")["pairs"]
    expected = [exact_mann_whitney(groups[a], groups[b]) for a, b in zip(pairs["a"], pairs["b"])]
    assert list(pairs["U"]) == pytest.approx([u for u, _ in expected])  # 2, 1, 4 pairs where the first arm is higher
    assert list(pairs["p"]) == pytest.approx([p for _, p in expected])
    assert list(pairs["p_adj"]) == pytest.approx(holm_by_hand([p for _, p in expected]))
    assert pairs.loc[0, "rank_biserial"] == pytest.approx(2 * 2 / 12 - 1)


# --- ANCOVA ---

ANCOVA_FRAME = pd.DataFrame({
    "arm": ["static"] * 4 + ["chat"] * 4 + ["tutor"] * 4,
    "pre": [0.2, 0.4, 0.5, 0.7, 0.3, 0.3, 0.6, 0.8, 0.1, 0.5, 0.4, 0.9],
    "post": [0.3, 0.5, 0.5, 0.8, 0.6, 0.5, 0.9, 1.0, 0.3, 0.6, 0.6, 0.9],
})


def lstsq_fit(X, y):
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    return beta, float(resid @ resid)


def test_ancova_adjusted_means_and_contrasts_against_normal_equations():
    df = ANCOVA_FRAME
    y, x = df["post"].to_numpy(), df["pre"].to_numpy()
    chat, tutor = (df["arm"] == "chat").to_numpy(float), (df["arm"] == "tutor").to_numpy(float)
    X = np.column_stack([np.ones(12), chat, tutor, x])
    beta, sse = lstsq_fit(X, y)
    sigma2 = sse / (12 - 4)
    cov = sigma2 * np.linalg.inv(X.T @ X)
    xbar = x.mean()

    got = ancova(df, reference="static")
    assert got["levels"] == ["static", "chat", "tutor"] and got["df_resid"] == 8
    means = got["adjusted_means"].set_index("arm")
    for arm, L in {"static": [1, 0, 0, xbar], "chat": [1, 1, 0, xbar], "tutor": [1, 0, 1, xbar]}.items():
        L = np.array(L)
        assert means.loc[arm, "adjusted_mean"] == pytest.approx(L @ beta)
        assert means.loc[arm, "se"] == pytest.approx(math.sqrt(L @ cov @ L))
    contrast = got["contrasts"].set_index("contrast").loc["chat - static"]
    se = math.sqrt(cov[1, 1])
    assert contrast["estimate"] == pytest.approx(beta[1])
    assert contrast["se"] == pytest.approx(se)
    assert contrast["t"] == pytest.approx(beta[1] / se)
    assert contrast["p"] == pytest.approx(2 * sps.t.sf(abs(beta[1] / se), 8))
    half = sps.t.ppf(0.975, 8) * se
    assert (contrast["ci_low"], contrast["ci_high"]) == pytest.approx((beta[1] - half, beta[1] + half))
    assert got["slope"]["estimate"] == pytest.approx(beta[3])


def test_ancova_partial_eta_squared_from_sums_of_squares():
    df = ANCOVA_FRAME
    y, x = df["post"].to_numpy(), df["pre"].to_numpy()
    dummies = np.column_stack([(df["arm"] == a).to_numpy(float) for a in ("chat", "tutor")])
    _, sse_full = lstsq_fit(np.column_stack([np.ones(12), dummies, x]), y)
    _, sse_pre_only = lstsq_fit(np.column_stack([np.ones(12), x]), y)
    ss_arm = sse_pre_only - sse_full
    got = ancova(df)
    assert got["partial_eta2"] == pytest.approx(ss_arm / (ss_arm + sse_full))
    f = (ss_arm / 2) / (sse_full / 8)
    assert got["arm_F"] == pytest.approx(f)
    assert got["arm_p"] == pytest.approx(sps.f.sf(f, 2, 8))


def test_ancova_planned_contrast_is_the_weighted_sum_of_adjusted_means():
    df = ANCOVA_FRAME
    y, x = df["post"].to_numpy(), df["pre"].to_numpy()
    chat, tutor = (df["arm"] == "chat").to_numpy(float), (df["arm"] == "tutor").to_numpy(float)
    X = np.column_stack([np.ones(12), chat, tutor, x])
    beta, sse = lstsq_fit(X, y)
    cov = sse / 8 * np.linalg.inv(X.T @ X)
    # chat - (static + tutor)/2 on adjusted means: the covariate term cancels.
    L = np.array([0.0, 1.0, -0.5, 0.0])
    got = ancova(df, reference="static", contrasts={
        "chat vs rest": {"chat": 1, "static": -0.5, "tutor": -0.5},
        "same, as a vector": [-0.5, 1, -0.5],
    })["planned"].set_index("contrast")
    for name in ("chat vs rest", "same, as a vector"):
        assert got.loc[name, "estimate"] == pytest.approx(L @ beta)
        assert got.loc[name, "se"] == pytest.approx(math.sqrt(L @ cov @ L))


def test_ancova_refuses_a_planned_contrast_naming_an_unknown_arm():
    with pytest.raises(ValueError, match="unknown arms"):
        ancova(ANCOVA_FRAME, contrasts={"x": {"nope": 1, "chat": -1}})


# --- item-level model ---

def balanced_answers(seed=3, n=40, items=6):
    """Every participant answers `items` items pre and `items` post; forms counterbalanced."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        arm = "chat" if i % 2 else "static"
        ability = rng.normal(0, 0.8)
        for phase in ("pre_test", "post_test"):
            form = "A" if (phase == "pre_test") == (i % 4 < 2) else "B"
            for k in range(items):
                eta = ability + 0.2 * k - 0.5 + (0.4 if phase == "post_test" else 0)
                eta += 0.9 if (phase == "post_test" and arm == "chat") else 0
                rows.append({"pseudonym": f"p{i:02d}", "arm": arm, "phase": phase, "item_id": f"{form}{k}",
                             "correct": float(rng.random() < 1 / (1 + math.exp(-eta)))})
    return pd.DataFrame(rows)


def logit(p):
    return math.log(p / (1 - p))


def test_item_model_without_items_recovers_the_logit_difference_in_differences():
    # Balanced clusters and a saturated arm x phase mean model: GEE's fitted cell means are the cell
    # proportions whatever the working correlation, so the coefficients are logits of proportions.
    data = balanced_answers()
    p = data.groupby(["arm", "phase"])["correct"].mean()
    did = (logit(p["chat", "post_test"]) - logit(p["chat", "pre_test"])) - (
        logit(p["static", "post_test"]) - logit(p["static", "pre_test"]))
    got = item_level_model(data, reference="static", item_effects=False)
    coef = got["coefficients"].set_index("term")["estimate"]
    assert got["interaction"].loc[0, "term"] == "arm[chat]:post"
    assert coef["arm[chat]:post"] == pytest.approx(did, abs=1e-5)
    assert coef["arm[chat]"] == pytest.approx(logit(p["chat", "pre_test"]) - logit(p["static", "pre_test"]), abs=1e-5)
    assert coef["Intercept"] == pytest.approx(logit(p["static", "pre_test"]), abs=1e-5)
    assert got["n_participants"] == 40 and got["n_obs"] == 480


def test_item_model_with_independence_equals_maximum_likelihood_and_hand_sandwich():
    data = balanced_answers()
    got = item_level_model(data, reference="static", cov_struct="independence")
    coef = got["coefficients"]
    # Rebuild the same design by hand and fit it with scikit-learn (unpenalised ML).
    d = data.sort_values(["pseudonym", "phase", "item_id"], kind="stable").reset_index(drop=True)
    chat = (d["arm"] == "chat").to_numpy(float)
    post = (d["phase"] == "post_test").to_numpy(float)
    items = sorted(d["item_id"].unique())
    X = np.column_stack([chat, post, chat * post] + [(d["item_id"] == it).to_numpy(float) for it in items[1:]])
    y = d["correct"].to_numpy()
    ml = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(X, y)
    ml_params = np.r_[ml.intercept_, ml.coef_.ravel()]
    assert coef["estimate"].to_numpy() == pytest.approx(ml_params, abs=1e-4)
    # Robust (sandwich) covariance by hand: B^-1 M B^-1, B = X'WX, M = sum over people of s_i s_i'.
    Xf = np.column_stack([np.ones(len(y)), X])
    mu = 1 / (1 + np.exp(-Xf @ ml_params))
    bread = np.linalg.inv(Xf.T @ (Xf * (mu * (1 - mu))[:, None]))
    meat = np.zeros_like(bread)
    for _, idx in d.groupby("pseudonym").indices.items():
        s = Xf[idx].T @ (y[idx] - mu[idx])
        meat += np.outer(s, s)
    se = np.sqrt(np.diag(bread @ meat @ bread))
    assert coef["se"].to_numpy() == pytest.approx(se, rel=1e-3)
    assert coef.loc[3, "p"] == pytest.approx(2 * sps.norm.sf(abs(ml_params[3] / se[3])), rel=1e-2)


def test_item_model_default_gee_finds_a_planted_interaction():
    got = item_level_model(balanced_answers(seed=11, n=200), reference="static")
    row = got["interaction"].iloc[0]
    assert row["ci_low"] < 0.9 < row["ci_high"]  # planted on the (subject-specific) logit scale
    assert row["p"] < 0.05
    assert 0 < got["correlation"] < 1
    assert got["cov_struct"] == "exchangeable"


def test_item_model_drops_items_everyone_answered_alike_and_refuses_confounded_designs():
    data = balanced_answers()
    data.loc[data["item_id"] == "A0", "correct"] = 1.0
    assert item_level_model(data)["dropped_items"] == ["A0"]
    confounded = data.assign(item_id=data["phase"].str[:3] + data["item_id"].str[1:])
    with pytest.raises(ValueError, match="not identifiable"):
        item_level_model(confounded)


def test_item_model_bayes_sensitivity_analysis_runs():
    got = item_level_model(balanced_answers(seed=11, n=200), reference="static", method="bayes")
    row = got["interaction"].iloc[0]
    assert row["term"] == "arm[chat]:post" and row["estimate"] > 0
    assert set(got["vc_sd"]) == {"participant", "item"}


# --- power ---

def test_power_against_the_normal_approximation_and_design_effect():
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    closed_form = 2 * z**2 / 0.5**2  # 62.79
    assert math.ceil(closed_form) == 63
    got = power_next_study(0.5, 0.0)
    assert got["n_per_arm"] == 64  # the noncentral t needs a little more than the normal approximation
    assert closed_form < got["n_ttest_exact"] < closed_form + 1.5
    assert got["n_total"] == 128
    with_pre = power_next_study(0.5, 0.5, k_arms=3)
    assert with_pre["n_ancova_exact"] == pytest.approx(got["n_ttest_exact"] * (1 - 0.5**2))
    assert with_pre["n_per_arm"] == 48  # ceil(63.77 * 0.75) = ceil(47.82)
    assert with_pre["n_total"] == 144
    assert with_pre["effect_size"] == 0.5 and with_pre["pre_post_r"] == 0.5


def test_power_with_more_comparisons_needs_more_participants():
    z = sps.norm.ppf(1 - 0.05 / 3 / 2) + sps.norm.ppf(0.8)
    got = power_next_study(0.5, 0.0, comparisons=3)
    assert got["alpha_per_comparison"] == pytest.approx(0.05 / 3)
    assert 2 * z**2 / 0.25 < got["n_ttest_exact"] < 2 * z**2 / 0.25 + 1.5

"""The inference library against statsmodels / scipy and hand formulas, computed here independently.

The study table is simulated: 300 participants in five arms (weights 2:1:1:1:1, so the arms differ in
size), four covariates, and arm-specific noise (so HC3 and Welch have something to do). No expected
value comes from the function under test: each is a numpy formula written out here, a second library
call, or a printed number.
"""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multicomp import MultiComparison, pairwise_tukeyhsd
from statsmodels.stats.power import TTestIndPower

from analysis.inference import (
    concept_gain, correlation, describe, games_howell, linear_model, mann_whitney, oneway_anova,
    partial_eta2_ci, power_unequal, round_to_precision, score_precision, sum_coded_formula, tukey_hsd,
)
from analysis.stats import kruskal, pairwise, power_next_study, welch_t

ARMS = ["agentic", "chat", "mismatched", "scripted", "static"]
COVARIATES = ["pre", "age", "prior_ai", "nfc"]


@pytest.fixture(scope="module")
def study():
    """300 rows, 5 arms, 4 covariates; post on a 10-item grid plus noise whose SD differs by arm."""
    rng = np.random.default_rng(20261204)
    arm = rng.choice(ARMS, size=300, p=[2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6])
    pre = rng.integers(0, 11, size=300) / 10
    age = rng.normal(35, 10, size=300).round()
    prior_ai = rng.integers(1, 8, size=300).astype(float)
    nfc = rng.normal(0, 1, size=300)
    effect = pd.Series(arm).map({"agentic": 0.15, "chat": 0.10, "mismatched": 0.02, "scripted": 0.05,
                                 "static": 0.0}).to_numpy()
    sd = pd.Series(arm).map({"agentic": 0.08, "chat": 0.12, "mismatched": 0.2, "scripted": 0.1,
                             "static": 0.15}).to_numpy()
    post = np.clip(0.2 + 0.5 * pre + effect + 0.002 * (age - 35) + 0.01 * prior_ai + 0.03 * nfc
                   + rng.normal(0, 1, 300) * sd, 0, 1)
    post = np.round(post * 10) / 10
    return pd.DataFrame({"arm": arm, "pre": pre, "post": post, "gain": post - pre, "age": age,
                         "prior_ai": prior_ai, "nfc": nfc})


# --- hand-built least squares ---------------------------------------------------------------------

def design(df, arm_coding="treatment", interaction=False):
    """Return X (intercept, arm columns, covariates[, arm×pre]) and the column names, built by hand."""
    cols, names = [np.ones(len(df))], ["Intercept"]
    arm_cols = []
    for lv in ARMS[1:]:
        if arm_coding == "treatment":
            c = (df["arm"] == lv).to_numpy(float)
        else:  # sum-to-zero: +1 for the level, −1 for the last level
            c = (df["arm"] == lv).to_numpy(float) - (df["arm"] == ARMS[0]).to_numpy(float)
        arm_cols.append(c)
    cols += arm_cols
    names += [f"arm{k}" for k in range(len(arm_cols))]
    for c in COVARIATES:
        cols.append(df[c].to_numpy(float))
        names.append(c)
    if interaction:
        for k, c in enumerate(arm_cols):
            cols.append(c * df["pre"].to_numpy(float))
            names.append(f"arm{k}:pre")
    return np.column_stack(cols), names


def ssr(X, y):
    b, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ b
    return float(e @ e)


def drop(X, names, term):
    """Return X without the columns of `term` ("arm": every arm dummy)."""
    keep = [i for i, n in enumerate(names) if not (n == term or (term == "arm" and n.startswith("arm")))]
    return X[:, keep]


FORMULA = "post ~ C(arm) + pre + age + prior_ai + nfc"


# --- linear_model ---------------------------------------------------------------------------------

def test_linear_model_coefficients_match_the_normal_equations(study):
    got = linear_model(study, FORMULA)["coefficients"]
    X, _ = design(study)
    y = study["post"].to_numpy(float)
    XtX_inv = np.linalg.inv(X.T @ X)
    b = XtX_inv @ X.T @ y
    e = y - X @ b
    s2 = e @ e / (len(y) - X.shape[1])
    se = np.sqrt(np.diag(XtX_inv) * s2)
    assert list(got["estimate"]) == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert list(got["se"]) == pytest.approx(se, rel=1e-9)
    tcrit = sps.t.ppf(0.975, len(y) - X.shape[1])
    assert list(got["ci_low"]) == pytest.approx(b - tcrit * se, rel=1e-9, abs=1e-12)
    assert list(got["p"]) == pytest.approx(2 * sps.t.sf(np.abs(b / se), len(y) - X.shape[1]), rel=1e-7, abs=1e-15)


def test_linear_model_hc3_standard_errors_match_the_sandwich_by_hand(study):
    got = linear_model(study, FORMULA, robust="HC3")
    X, _ = design(study)
    y = study["post"].to_numpy(float)
    XtX_inv = np.linalg.inv(X.T @ X)
    b = XtX_inv @ X.T @ y
    e = y - X @ b
    h = np.einsum("ij,jk,ik->i", X, XtX_inv, X)
    meat = X.T @ (X * (e ** 2 / (1 - h) ** 2)[:, None])
    V = XtX_inv @ meat @ XtX_inv
    assert got["se_type"] == "HC3"
    assert list(got["coefficients"]["se"]) == pytest.approx(np.sqrt(np.diag(V)), rel=1e-9)
    # the robust F of the arm term is the Wald test of the four arm coefficients with that covariance
    L = np.zeros((4, X.shape[1]))
    L[np.arange(4), np.arange(1, 5)] = 1
    Lb = L @ b
    wald = float(Lb @ np.linalg.inv(L @ V @ L.T) @ Lb) / 4
    arm = got["anova"].set_index("term").loc["C(arm)"]
    assert arm["F"] == pytest.approx(wald, rel=1e-9)
    assert arm["p"] == pytest.approx(sps.f.sf(wald, 4, len(y) - X.shape[1]), rel=1e-7)
    assert arm["f_test"] == "HC3 Wald F" and got["anova_test"] == "HC3 Wald F"
    classical = linear_model(study, FORMULA)["anova"].set_index("term").loc["C(arm)"]
    # sums of squares and effect sizes stay the classical ones; only the test changes
    assert arm["sum_sq"] == pytest.approx(classical["sum_sq"]) and arm["partial_eta2"] == pytest.approx(
        classical["partial_eta2"])
    assert arm["F"] != pytest.approx(classical["F"])


def test_type_ii_sums_of_squares_and_effect_sizes_match_model_comparisons(study):
    got = linear_model(study, FORMULA)
    table = got["anova"].set_index("term")
    X, names = design(study)
    y = study["post"].to_numpy(float)
    full = ssr(X, y)
    n, p = X.shape
    df_res = n - p
    ss_total = float(((y - y.mean()) ** 2).sum())
    ms_res = full / df_res
    for term, cols, dof in [("C(arm)", "arm", 4), ("pre", "pre", 1), ("age", "age", 1), ("nfc", "nfc", 1)]:
        ss = ssr(drop(X, names, cols), y) - full
        row = table.loc[term]
        assert row["sum_sq"] == pytest.approx(ss, rel=1e-9)
        assert row["df"] == dof
        F = (ss / dof) / ms_res
        assert row["F"] == pytest.approx(F, rel=1e-9)
        assert row["p"] == pytest.approx(sps.f.sf(F, dof, df_res), rel=1e-6, abs=1e-300)
        assert row["eta2"] == pytest.approx(ss / ss_total, rel=1e-9)
        assert row["partial_eta2"] == pytest.approx(ss / (ss + full), rel=1e-9)
        assert row["omega2"] == pytest.approx((ss - dof * ms_res) / (ss_total + ms_res), rel=1e-9)
        assert row["partial_omega2"] == pytest.approx((ss - dof * ms_res) / (ss + (n - dof) * ms_res), rel=1e-9)
    # classic η² is smaller than partial η² whenever other terms explain variance
    assert table.loc["C(arm)", "eta2"] < table.loc["C(arm)", "partial_eta2"]
    assert got["n"] == 300 and got["typ"] == 2 and got["se_type"] == "classical"


def test_type_i_sums_of_squares_are_sequential_in_the_order_of_the_table(study):
    # patsy enters terms without a numeric factor first, so C(arm) precedes pre although written after it
    table = linear_model(study, "post ~ pre + C(arm) + age + prior_ai + nfc", typ=1)["anova"].set_index("term")
    assert list(table.index) == ["C(arm)", "pre", "age", "prior_ai", "nfc", "Residual"]
    y = study["post"].to_numpy(float)
    ones = np.ones((len(y), 1))
    arms = np.column_stack([(study["arm"] == lv).to_numpy(float) for lv in ARMS[1:]])
    pre = study[["pre"]].to_numpy(float)
    ss_arm = ssr(ones, y) - ssr(np.column_stack([ones, arms]), y)
    ss_pre = ssr(np.column_stack([ones, arms]), y) - ssr(np.column_stack([ones, arms, pre]), y)
    assert table.loc["C(arm)", "sum_sq"] == pytest.approx(ss_arm, rel=1e-9)
    assert table.loc["pre", "sum_sq"] == pytest.approx(ss_pre, rel=1e-9)
    assert table["sum_sq"].sum() == pytest.approx(((y - y.mean()) ** 2).sum(), rel=1e-12)


def test_type_iii_uses_sum_to_zero_contrasts_and_drops_each_term_from_the_full_model(study):
    formula = "post ~ arm * pre + age + prior_ai + nfc"
    got = linear_model(study, formula, typ=3)
    assert got["coding"] == "sum-to-zero"
    assert "C(arm, Sum)" in got["formula_fitted"]
    table = got["anova"].set_index("term")
    X, names = design(study, arm_coding="sum", interaction=True)
    y = study["post"].to_numpy(float)
    full = ssr(X, y)
    arm_main = [i for i, n in enumerate(names) if n.startswith("arm") and ":" not in n]
    inter = [i for i, n in enumerate(names) if ":" in n]
    ss_arm = ssr(np.delete(X, arm_main, axis=1), y) - full
    ss_inter = ssr(np.delete(X, inter, axis=1), y) - full
    assert table.loc["C(arm, Sum)", "sum_sq"] == pytest.approx(ss_arm, rel=1e-8)
    assert table.loc["C(arm, Sum):pre", "sum_sq"] == pytest.approx(ss_inter, rel=1e-8)
    assert "Intercept" in table.index


def test_sum_coded_formula_recodes_categorical_factors_only():
    df = pd.DataFrame({"arm": ["a", "b"], "pre": [0.1, 0.2], "flag": [True, False], "y": [1.0, 2.0]})
    assert sum_coded_formula("y ~ arm * pre + flag", df) == "y ~ C(arm, Sum) + pre + C(arm, Sum):pre + C(flag, Sum)"
    assert sum_coded_formula("y ~ C(arm) - 1", df) == "y ~ C(arm, Sum) - 1"
    with pytest.raises(ValueError, match="sum-to-zero"):
        sum_coded_formula("y ~ C(arm, Treatment)", df)
    assert "Sum(omit" in sum_coded_formula("y ~ C(arm, Sum(omit='b'))", df)


def test_robust_type_i_and_unknown_options_are_refused(study):
    with pytest.raises(ValueError, match="Type II and III"):
        linear_model(study, FORMULA, typ=1, robust="HC3")
    with pytest.raises(ValueError):
        linear_model(study, FORMULA, robust="HC1")
    with pytest.raises(ValueError):
        linear_model(study, FORMULA, typ=4)


def test_partial_eta2_interval_inverts_the_noncentral_f(study):
    row = linear_model(study, FORMULA)["anova"].set_index("term").loc["C(arm)"]
    df2 = 300 - 9
    F = (row["partial_eta2"] / 4) / ((1 - row["partial_eta2"]) / df2)
    lam = {k: row[k] * df2 / (1 - row[k]) for k in ("partial_eta2_ci_low", "partial_eta2_ci_high")}
    assert sps.ncf.cdf(F, 4, df2, lam["partial_eta2_ci_low"]) == pytest.approx(0.975, abs=1e-7)
    assert sps.ncf.cdf(F, 4, df2, lam["partial_eta2_ci_high"]) == pytest.approx(0.025, abs=1e-7)
    assert row["partial_eta2_ci_low"] < row["partial_eta2"] < row["partial_eta2_ci_high"]


def test_partial_eta2_interval_starts_at_zero_when_f_is_small():
    lo, hi = partial_eta2_ci(0.2, 2, 50)
    assert lo == 0.0 and 0 < hi < 1


# --- one-way ANOVA, Tukey, Games–Howell ---------------------------------------------------------------

def test_oneway_anova_classic_and_welch_against_scipy_and_the_formula(study):
    got = oneway_anova(study, "gain", "arm")
    groups = [study.loc[study["arm"] == a, "gain"].to_numpy(float) for a in ARMS]
    classic = sps.f_oneway(*groups)
    welch = sps.f_oneway(*groups, equal_var=False)
    assert got["F"] == pytest.approx(classic.statistic, rel=1e-10)
    assert got["p"] == pytest.approx(classic.pvalue, rel=1e-8)
    assert got["welch_F"] == pytest.approx(welch.statistic, rel=1e-9)
    assert got["welch_p"] == pytest.approx(welch.pvalue, rel=1e-7)
    n = np.array([len(g) for g in groups])
    m = np.array([g.mean() for g in groups])
    w = n / np.array([g.var(ddof=1) for g in groups])
    mw = (w * m).sum() / w.sum()
    k = 5
    lam = ((1 - w / w.sum()) ** 2 / (n - 1)).sum()
    F = ((w * (m - mw) ** 2).sum() / (k - 1)) / (1 + 2 * (k - 2) * lam / (k ** 2 - 1))
    assert got["welch_F"] == pytest.approx(F, rel=1e-10)
    assert got["welch_df"][1] == pytest.approx((k ** 2 - 1) / (3 * lam), rel=1e-10)
    allv = np.concatenate(groups)
    ss_b = (n * (m - allv.mean()) ** 2).sum()
    ss_t = ((allv - allv.mean()) ** 2).sum()
    ms_w = (ss_t - ss_b) / (300 - k)
    assert got["eta2"] == pytest.approx(ss_b / ss_t)
    assert got["omega2"] == pytest.approx((ss_b - (k - 1) * ms_w) / (ss_t + ms_w))


def test_oneway_anova_leaves_out_an_empty_group(study):
    df = study.assign(arm=pd.Categorical(study["arm"], categories=[*ARMS, "nobody"]))
    got = oneway_anova(df, "gain", "arm")
    assert got["dropped_groups"] == ["nobody"] and got["k"] == 5
    assert got["F"] == pytest.approx(oneway_anova(study, "gain", "arm")["F"])
    with pytest.raises(ValueError):
        oneway_anova(study[study["arm"] == "chat"], "gain", "arm")


def test_tukey_hsd_against_statsmodels(study):
    got = tukey_hsd(study, "gain", "arm", alpha=0.05)
    ref = pairwise_tukeyhsd(study["gain"].to_numpy(float), study["arm"].to_numpy(), alpha=0.05)
    # statsmodels reports group2 − group1 for pairs in the same order; ours is a − b
    assert list(zip(got["a"], got["b"])) == list(itertools.combinations(ARMS, 2))
    assert list(got["mean_diff"]) == pytest.approx(-np.asarray(ref.meandiffs), rel=1e-12)
    assert list(got["p_adj"]) == pytest.approx(np.asarray(ref.pvalues), abs=2e-3)  # statsmodels interpolates q tables
    assert list(got["ci_low"]) == pytest.approx(-ref.confint[:, 1], abs=1e-3)
    assert set(got["ci_adjustment"]) == {"tukey"}


def test_games_howell_against_statsmodels_unequal_variance_tukey(study):
    got = games_howell(study, "gain", "arm", alpha=0.05)
    ref = MultiComparison(study["gain"].to_numpy(float), study["arm"].to_numpy()).tukeyhsd(alpha=0.05,
                                                                                           use_var="unequal")
    assert list(got["mean_diff"]) == pytest.approx(-np.asarray(ref.meandiffs), rel=1e-12)
    assert list(got["ci_high"]) == pytest.approx(-ref.confint[:, 0], abs=1e-3)
    assert list(got["ci_low"]) == pytest.approx(-ref.confint[:, 1], abs=1e-3)
    a = study.loc[study["arm"] == "agentic", "gain"].to_numpy(float)
    b = study.loc[study["arm"] == "chat", "gain"].to_numpy(float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    q = abs(a.mean() - b.mean()) / math.sqrt((va + vb) / 2)
    first = got.iloc[0]
    assert first["df"] == pytest.approx(dof) and first["q"] == pytest.approx(q)
    assert first["p_adj"] == pytest.approx(sps.studentized_range.sf(q, 5, dof), rel=1e-9)


def test_games_howell_needs_two_values_per_group():
    df = pd.DataFrame({"arm": ["a", "a", "b"], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError):
        games_howell(df, "y", "arm")


# --- correlation ---------------------------------------------------------------------------------

def test_pearson_interval_is_fisher_z_as_scipy(study):
    got = correlation(study["pre"], study["post"])
    ref = sps.pearsonr(study["pre"], study["post"])
    ci = ref.confidence_interval(0.95)
    assert got["r"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_spearman_interval_uses_the_bonett_wright_se(study):
    got = correlation(study["pre"], study["post"], method="spearman")
    rho = sps.spearmanr(study["pre"], study["post"]).statistic
    se = math.sqrt((1 + rho ** 2 / 2) / (300 - 3))
    z = math.atanh(rho)
    assert got["r"] == pytest.approx(rho)
    assert got["ci_low"] == pytest.approx(math.tanh(z - 1.959963984540054 * se), rel=1e-10)
    assert got["ci_high"] == pytest.approx(math.tanh(z + 1.959963984540054 * se), rel=1e-10)
    assert got["ci_method"] == "Fisher z, Bonett–Wright se"


def test_one_sided_correlation_halves_p_in_its_direction_and_bounds_one_side(study):
    two = correlation(study["pre"], study["post"], method="spearman")
    greater = correlation(study["pre"], study["post"], method="spearman", alternative="greater")
    less = correlation(study["pre"], study["post"], method="spearman", alternative="less")
    assert two["r"] > 0
    assert greater["p"] == pytest.approx(two["p"] / 2, rel=1e-9)
    assert less["p"] == pytest.approx(1 - two["p"] / 2, rel=1e-9)
    assert greater["ci_high"] == 1.0 and less["ci_low"] == -1.0
    assert two["ci_low"] < greater["ci_low"] < two["r"]


def test_correlation_drops_incomplete_pairs_and_refuses_tiny_samples():
    got = correlation([1, 2, 3, 4, 5, np.nan], [2, 1, 4, 3, 5, 9])
    assert got["n"] == 5
    with pytest.raises(ValueError):
        correlation([1, 2, 3], [1, 2, 3])


# --- two-group tests with alternative ------------------------------------------------------------

def test_welch_t_one_sided_against_scipy_and_its_flip(study):
    two = welch_t(study, "agentic", "static", outcome="gain")
    greater = welch_t(study, "agentic", "static", outcome="gain", alternative="greater")
    a = study.loc[study["arm"] == "agentic", "gain"]
    b = study.loc[study["arm"] == "static", "gain"]
    assert greater["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert welch_t(study, "static", "agentic", outcome="gain", alternative="less")["p"] == pytest.approx(greater["p"])
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert greater["ci_low"] == pytest.approx(greater["mean_diff"] - sps.t.ppf(0.95, two["df"]) * se)
    assert greater["ci_high"] == math.inf and greater["alternative"] == "greater"
    less = welch_t(study, "agentic", "static", outcome="gain", alternative="less")
    assert less["ci_low"] == -math.inf and less["p"] == pytest.approx(1 - greater["p"])
    assert two["alternative"] == "two-sided"
    with pytest.raises(ValueError):
        welch_t(study, "agentic", "static", outcome="gain", alternative="larger")


def test_mann_whitney_against_scipy_and_one_sided_flip(study):
    got = mann_whitney(study, "gain", "arm", "agentic", "static", precision=0.1)
    a = round_to_precision(study.loc[study["arm"] == "agentic", "gain"].to_numpy(float), 0.1)
    b = round_to_precision(study.loc[study["arm"] == "static", "gain"].to_numpy(float), 0.1)
    ref = sps.mannwhitneyu(a, b)
    assert got["U"] == ref.statistic and got["p"] == pytest.approx(ref.pvalue)
    u_hand = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    assert got["U"] == pytest.approx(u_hand)
    assert got["rank_biserial"] == pytest.approx(2 * u_hand / (len(a) * len(b)) - 1)
    greater = mann_whitney(study, "gain", "arm", "agentic", "static", alternative="greater", precision=0.1)
    flipped = mann_whitney(study, "gain", "arm", "static", "agentic", alternative="less", precision=0.1)
    assert greater["p"] == pytest.approx(sps.mannwhitneyu(a, b, alternative="greater").pvalue)
    assert flipped["p"] == pytest.approx(greater["p"])
    assert greater["ci_high"] == math.inf and flipped["ci_low"] == -math.inf


def test_mann_whitney_hodges_lehmann_interval_by_hand():
    df = pd.DataFrame({"arm": ["a"] * 6 + ["b"] * 5, "y": [5.1, 6.2, 7.0, 8.4, 6.6, 9.3, 4.0, 5.5, 3.2, 6.1, 4.8]})
    got = mann_whitney(df, "y", "arm", "a", "b")
    d = sorted(x - y for x in df.y[:6] for y in df.y[6:])
    c = round(30 / 2 - 1.959963984540054 * math.sqrt(30 * 12 / 12))
    assert got["hodges_lehmann"] == pytest.approx(float(np.median(d)))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((d[c - 1], d[30 - c]))


def test_mann_whitney_refuses_an_empty_group():
    df = pd.DataFrame({"arm": ["a", "a"], "y": [1.0, 2.0]})
    with pytest.raises(ValueError, match="both groups"):
        mann_whitney(df, "y", "arm", "a", "b")


# --- precision --------------------------------------------------------------------------------------

def test_scores_equal_on_paper_tie_after_rounding_to_the_instruments_precision():
    raw = np.array([0.8 - 0.7, 0.7 - 0.6])
    assert raw[0] != raw[1]  # 0.10000000000000009 vs 0.09999999999999998
    rounded = round_to_precision(raw, score_precision(10))
    assert rounded[0] == rounded[1] == 0.1
    assert list(sps.rankdata(rounded)) == [1.5, 1.5]
    s = pd.Series([0.33333333, np.nan], index=[7, 9])
    out = round_to_precision(s, score_precision(3))
    assert list(out.index) == [7, 9] and out[7] == pytest.approx(1 / 3) and np.isnan(out[9])
    assert round_to_precision(raw, None) is raw
    with pytest.raises(ValueError):
        round_to_precision(raw, 0)
    with pytest.raises(ValueError):
        score_precision(2.5)


def test_rounding_changes_u_where_float_noise_broke_ties():
    # the same paper scores, reached by different subtractions
    a = [0.8 - 0.7, 0.9 - 0.6, 0.5 - 0.3]
    b = [0.7 - 0.6, 0.6 - 0.3, 0.4 - 0.2]
    df = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "gain": a + b})
    raw = kruskal(df, "gain")["pairs"].iloc[0]
    tied = kruskal(df, "gain", precision=0.1)["pairs"].iloc[0]
    assert raw["U"] != 4.5
    assert tied["U"] == 4.5  # every a_i equals a b_j: U = n_a·n_b/2
    assert mann_whitney(df, "gain", "arm", "a", "b", precision=0.1)["U"] == 4.5
    assert kruskal(df, "gain", precision=0.1)["precision"] == 0.1


# --- describe ---------------------------------------------------------------------------------------

def test_describe_ddof_changes_the_sd_only(study):
    one = describe(study, "gain", "arm", ddof=1).set_index("arm")
    zero = describe(study, "gain", "arm", ddof=0).set_index("arm")
    v = study.loc[study["arm"] == "chat", "gain"].to_numpy(float)
    n = len(v)
    assert one.loc["chat", "sd"] == pytest.approx(math.sqrt(((v - v.mean()) ** 2).sum() / (n - 1)))
    assert zero.loc["chat", "sd"] == pytest.approx(math.sqrt(((v - v.mean()) ** 2).sum() / n))
    assert one.loc["chat", "sd"] / zero.loc["chat", "sd"] == pytest.approx(math.sqrt(n / (n - 1)))
    assert one.loc["chat", "se"] == zero.loc["chat", "se"] == pytest.approx(v.std(ddof=1) / math.sqrt(n))
    lo, hi = sps.t.interval(0.95, n - 1, loc=v.mean(), scale=v.std(ddof=1) / math.sqrt(n))
    assert (one.loc["chat", "ci_low"], one.loc["chat", "ci_high"]) == pytest.approx((lo, hi))


def test_describe_lists_an_empty_group_with_nan(study):
    df = study.assign(arm=pd.Categorical(study["arm"], categories=[*ARMS, "nobody"]))
    got = describe(df, "gain", "arm").set_index("arm")
    assert got.loc["nobody", "n"] == 0 and np.isnan(got.loc["nobody", "mean"]) and np.isnan(got.loc["nobody", "sd"])
    one = describe(pd.DataFrame({"arm": ["x"], "y": [0.5]}), "y", "arm", ddof=0).iloc[0]
    assert one["sd"] == 0.0 and np.isnan(one["se"])


# --- CIs labelled with their adjustment ------------------------------------------------------------

def test_pairwise_adjusted_intervals_are_bonferroni_for_holm_and_every_row_says_so(study):
    unadj = pairwise(study, outcome="gain", n_boot=50)
    adj = pairwise(study, outcome="gain", n_boot=50, ci="adjusted")
    assert set(unadj["ci_adjustment"]) == {"unadjusted"} and set(unadj["ci_level"]) == {0.95}
    assert set(adj["ci_adjustment"]) == {"bonferroni"}
    assert adj["ci_level"].iloc[0] == pytest.approx(1 - 0.05 / 10)
    first = welch_t(study, "agentic", "chat", outcome="gain", alpha=0.005)
    assert (adj.loc[0, "ci_low"], adj.loc[0, "ci_high"]) == pytest.approx((first["ci_low"], first["ci_high"]))
    assert adj.loc[0, "ci_high"] - adj.loc[0, "ci_low"] > unadj.loc[0, "ci_high"] - unadj.loc[0, "ci_low"]
    assert list(adj["p_adj"]) == pytest.approx(list(unadj["p_adj"]))
    sidak = pairwise(study, outcome="gain", n_boot=50, ci="adjusted", method="holm-sidak")
    assert set(sidak["ci_adjustment"]) == {"sidak"}
    assert sidak["ci_level"].iloc[0] == pytest.approx(0.95 ** (1 / 10))
    with pytest.raises(ValueError, match="no adjusted interval"):
        pairwise(study, outcome="gain", n_boot=50, ci="adjusted", method="fdr_bh")


def test_pairwise_precision_rounds_before_testing():
    df = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "gain": [0.8 - 0.7, 0.3, 0.2, 0.7 - 0.6, 0.0, 0.1]})
    got = pairwise(df, n_boot=20, precision=0.1)
    assert got.loc[0, "mean_diff"] == pytest.approx((0.1 + 0.3 + 0.2 - 0.1 - 0.0 - 0.1) / 3, abs=1e-12)


# --- power for unequal allocation ----------------------------------------------------------------

def power_by_hand(d, n1, n2, alpha):
    """Two-sided two-sample t power from the noncentral t, written out."""
    dof = n1 + n2 - 2
    nc = d * math.sqrt(n1 * n2 / (n1 + n2))
    crit = sps.t.ppf(1 - alpha / 2, dof)
    return sps.nct.sf(crit, dof, nc) + sps.nct.cdf(-crit, dof, nc)


def test_power_unequal_for_three_to_one_allocation_against_the_noncentral_t():
    got = power_unequal(0.5, {"agentic": 3, "chat": 1, "static": 1, "scripted": 1, "mismatched": 1})
    assert got["m"] == 4 and got["alpha_per_comparison"] == pytest.approx(0.0125)
    per = got["n_per_arm"]
    assert per["agentic"] == math.ceil(got["unit"] * 3) and per["chat"] == math.ceil(got["unit"])
    reached = power_by_hand(0.5, per["agentic"], per["chat"], 0.0125)
    assert reached >= 0.8
    assert got["comparisons"]["power"].iloc[0] == pytest.approx(reached, rel=1e-6)
    # the whole number of participants per weight unit just below the exact one is not enough
    u = math.floor(got["unit"])
    assert u < got["unit"] and power_by_hand(0.5, 3 * u, u, 0.0125) < 0.8
    assert got["n_total"] == sum(per.values())


def test_power_unequal_with_equal_weights_matches_power_next_study():
    got = power_unequal(0.5, [1, 1, 1], comparisons="all", pre_post_r=0.5)
    ref = power_next_study(0.5, 0.5, k_arms=3, comparisons=3)
    assert got["m"] == 3
    assert set(got["n_per_arm"].values()) == {ref["n_per_arm"]}


def test_power_unequal_one_sided_needs_fewer_and_the_family_matters():
    two = power_unequal(0.4, [2, 1])
    one = power_unequal(0.4, [2, 1], alternative="greater")
    assert one["n_total"] < two["n_total"]
    n1 = TTestIndPower().solve_power(0.4, alpha=0.05, power=0.8, ratio=0.5, alternative="larger")
    assert one["comparisons"]["n_a_exact"].iloc[0] == pytest.approx(n1)
    wide = power_unequal(0.4, [2, 1, 1], comparisons=[(0, 1), (0, 2), (1, 2)])
    assert wide["alpha_per_comparison"] == pytest.approx(0.05 / 3) and wide["binding"] == (1, 2)
    with pytest.raises(ValueError):
        power_unequal(0.4, [2, 1], comparisons=[(0, 5)])


# --- per-concept gain ------------------------------------------------------------------------------

def test_concept_gain_per_participant_and_concept():
    responses = pd.DataFrame([
        # pseudonym, phase, item_id, concept, score, correct
        ("p1", "pre_test", "q1", "dose", 0.0, False),
        ("p1", "pre_test", "q2", "dose", 1.0, True),
        ("p1", "post_test", "q3", "dose", 1.0, True),
        ("p1", "post_test", "q4", "dose", 1.0, True),
        ("p1", "pre_test", "q5", "risk", 0.0, False),
        ("p1", "post_test", "q6", "risk", 0.5, pd.NA),  # no correctness: the score stands in
        ("p1", "questionnaire", "s1", "dose", 5.0, pd.NA),  # not a test answer
        ("p1", "post_test", "q7", "", 1.0, True),  # no concept
        ("p2", "pre_test", "q1", "dose", 1.0, True),
    ], columns=["pseudonym", "phase", "item_id", "concept", "score", "correct"])
    got = concept_gain(responses)
    assert list(got.columns) == ["pseudonym", "concept", "n_pre", "n_post", "pre", "post", "gain"]
    rows = {(r.pseudonym, r.concept): r for r in got.itertuples()}
    assert set(rows) == {("p1", "dose"), ("p1", "risk"), ("p2", "dose")}
    assert (rows["p1", "dose"].pre, rows["p1", "dose"].post, rows["p1", "dose"].gain) == (0.5, 1.0, 0.5)
    assert (rows["p1", "dose"].n_pre, rows["p1", "dose"].n_post) == (2, 2)
    assert rows["p1", "risk"].gain == 0.5
    assert rows["p2", "dose"].n_post == 0 and np.isnan(rows["p2", "dose"].gain)
    with_arm = concept_gain(responses.assign(arm="chat"))
    assert list(with_arm.columns[:3]) == ["pseudonym", "arm", "concept"]


def test_linear_model_drops_incomplete_rows_and_reports_n(study):
    df = study.copy()
    df.loc[[3, 7], "age"] = np.nan
    got = linear_model(df, FORMULA)
    assert got["n"] == 298 and got["df_resid"] == 298 - 9
    complete = linear_model(df.dropna(), FORMULA)
    assert got["anova"]["sum_sq"].tolist() == pytest.approx(complete["anova"]["sum_sq"].tolist())

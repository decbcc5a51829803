"""The inference library reproduces published worked examples, to the precision they were printed with.

Every expected number below is copied from a stored public source named in the comment above it: R
output kept in statsmodels' and scipy's own test files and docstrings (as installed with the pinned
versions, statsmodels 0.15.0 and scipy 1.17.1), and a textbook ANCOVA. None is computed here.
"""
import numpy as np
import pandas as pd
import pytest

from analysis.inference import (
    correlation, games_howell, linear_model, mann_whitney, oneway_anova, partial_eta2_ci, tukey_hsd,
)


def close(value, printed, decimals):
    """True when `value` rounds to `printed` at the `decimals` it was printed with."""
    return abs(value - printed) <= 0.5 * 10 ** -decimals + 1e-12


# --- R car::Anova on the kidney data -----------------------------------------------------------------
# Source: statsmodels/stats/tests/test_anova.py (statsmodels 0.15.0), classes TestAnova2, TestAnova3,
# TestAnova2HC3 and TestAnova3HC3: the kidney data ("taken from JT's course") with its first three rows
# dropped (unbalanced), model log(Days + 1) ~ Duration * Weight with contr.sum. The values are R's: the
# file prints the R session (`car::Anova(sum2.lm.dropped, type='II')`) for the no-intercept variant of
# the same fit, and its robust classes note that R gives no sums of squares with a robust covariance.

KIDNEY = [  # Days, Duration, Weight, rows in the order of the source
    (0, 1, 1), (2, 1, 1), (1, 1, 1), (3, 1, 1), (0, 1, 1), (2, 1, 1), (0, 1, 1), (5, 1, 1), (6, 1, 1), (8, 1, 1),
    (2, 1, 2), (4, 1, 2), (7, 1, 2), (12, 1, 2), (15, 1, 2), (4, 1, 2), (3, 1, 2), (1, 1, 2), (5, 1, 2), (20, 1, 2),
    (15, 1, 3), (10, 1, 3), (8, 1, 3), (5, 1, 3), (25, 1, 3), (16, 1, 3), (7, 1, 3), (30, 1, 3), (3, 1, 3), (27, 1, 3),
    (0, 2, 1), (1, 2, 1), (1, 2, 1), (0, 2, 1), (4, 2, 1), (2, 2, 1), (7, 2, 1), (4, 2, 1), (0, 2, 1), (3, 2, 1),
    (5, 2, 2), (3, 2, 2), (2, 2, 2), (0, 2, 2), (1, 2, 2), (1, 2, 2), (3, 2, 2), (6, 2, 2), (7, 2, 2), (9, 2, 2),
    (10, 2, 3), (8, 2, 3), (12, 2, 3), (3, 2, 3), (7, 2, 3), (15, 2, 3), (4, 2, 3), (9, 2, 3), (6, 2, 3), (1, 2, 3),
]


@pytest.fixture(scope="module")
def kidney():
    return pd.DataFrame(KIDNEY, columns=["Days", "Duration", "Weight"]).drop([0, 1, 2])


KIDNEY_FORMULA = "np.log(Days + 1) ~ C(Duration) * C(Weight)"


def test_type_ii_anova_reproduces_r_car_anova_on_the_kidney_data(kidney):
    table = linear_model(kidney, "np.log(Days + 1) ~ C(Duration, Sum) * C(Weight, Sum)", typ=2)["anova"]
    # R: Sum Sq 3.067066 13.27205 0.1905093 27.60181; Df 1 2 2 51; F 5.667033 12.26141 0.1760025;
    #    Pr(>F) 0.02106078 4.487909e-05 0.8391231
    assert list(table["df"]) == [1, 2, 2, 51]
    for got, ref in zip(table["sum_sq"], [3.067066, 13.27205, 0.1905093, 27.60181]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(table["F"][:3], [5.667033, 12.26141, 0.1760025]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(table["p"][:3], [0.02106078, 4.487909e-05, 0.8391231]):
        assert got == pytest.approx(ref, rel=5e-7)


def test_type_iii_anova_with_sum_contrasts_reproduces_r(kidney):
    # typ=3 recodes C(Duration) and C(Weight) to contr.sum itself, as R needs options(contrasts=contr.sum)
    result = linear_model(kidney, KIDNEY_FORMULA, typ=3)
    table = result["anova"]
    # R: (Intercept), Duration, Weight, Duration:Weight, Residuals
    #    Sum Sq 151.4065 2.904723 13.45718 0.1905093 27.60181; Df 1 1 2 2 51
    #    F 279.7545 5.367071 12.43245 0.1760025; Pr(>F) 2.379855e-22 0.02457384 3.999431e-05 0.8391231
    assert list(table["term"]) == ["Intercept", "C(Duration, Sum)", "C(Weight, Sum)",
                                   "C(Duration, Sum):C(Weight, Sum)", "Residual"]
    assert list(table["df"]) == [1, 1, 2, 2, 51]
    for got, ref in zip(table["sum_sq"], [151.4065, 2.904723, 13.45718, 0.1905093, 27.60181]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(table["F"][:4], [279.7545, 5.367071, 12.43245, 0.1760025]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(table["p"][:4], [2.379855e-22, 0.02457384, 3.999431e-05, 0.8391231]):
        assert got == pytest.approx(ref, rel=5e-7)
    assert result["coding"] == "sum-to-zero"


def test_hc3_anova_f_tests_reproduce_r(kidney):
    two = linear_model(kidney, KIDNEY_FORMULA, typ=2, robust="HC3")["anova"]
    # R, type 2 with HC3: F 5.633786 10.89842 0.1317223; Pr(>F) 0.02142223 0.0001145965 0.8768817
    for got, ref in zip(two["F"][:3], [5.633786, 10.89842, 0.1317223]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(two["p"][:3], [0.02142223, 0.0001145965, 0.8768817]):
        assert got == pytest.approx(ref, rel=5e-7)
    three = linear_model(kidney, KIDNEY_FORMULA, typ=3, robust="HC3")["anova"]
    # R, type 3 with HC3: F 234.4026 4.496996 10.79903 0.1317223;
    #    Pr(>F) 1.037224e-20 0.03883841 0.0001228716 0.8768817
    for got, ref in zip(three["F"][:4], [234.4026, 4.496996, 10.79903, 0.1317223]):
        assert got == pytest.approx(ref, rel=5e-7)
    for got, ref in zip(three["p"][:4], [1.037224e-20, 0.03883841, 0.0001228716, 0.8768817]):
        assert got == pytest.approx(ref, rel=5e-7)
    assert set(three["f_test"].dropna()) == {"HC3 Wald F"}


# --- a textbook ANCOVA ----------------------------------------------------------------------------
# Source: Rutherford, A. (2001). Introducing ANOVA and ANCOVA: a GLM approach. London: Sage, pp. 118–120,
# the single-factor ANCOVA without interaction, as transcribed with its data in Eelbrain's
# examples/statistics/ANCOVA_rutherford.py (christianbrodbeck/Eelbrain): three groups of eight.
#            SS        df   MS        F
#   A        807.8161   2   403.9080  62.8830
#   Covariate 199.5366  1   199.5366  31.0651
#   Residuals 128.4634 20     6.4232
#   Total    1112      23

RUTHERFORD = pd.DataFrame({
    "y": [16, 7, 11, 9, 10, 11, 8, 8, 16, 10, 13, 10, 10, 14, 11, 12, 24, 29, 10, 22, 25, 28, 22, 24],
    "cov": [9, 5, 6, 4, 6, 8, 3, 5, 8, 5, 6, 5, 3, 6, 4, 6, 5, 8, 3, 4, 6, 9, 4, 5],
    "A": ["a1"] * 8 + ["a2"] * 8 + ["a3"] * 8,
})


@pytest.mark.parametrize("typ", [2, 3])
def test_ancova_reproduces_rutherford_2001(typ):
    result = linear_model(RUTHERFORD, "y ~ A + cov", typ=typ)
    table = result["anova"].set_index("term")
    factor = "A" if typ == 2 else "C(A, Sum)"
    assert close(table.loc[factor, "sum_sq"], 807.8161, 4) and table.loc[factor, "df"] == 2
    assert close(table.loc[factor, "mean_sq"], 403.9080, 4)
    assert close(table.loc[factor, "F"], 62.8830, 4)
    assert close(table.loc["cov", "sum_sq"], 199.5366, 4) and close(table.loc["cov", "F"], 31.0651, 4)
    assert close(table.loc["Residual", "sum_sq"], 128.4634, 4) and table.loc["Residual", "df"] == 20
    assert close(table.loc["Residual", "mean_sq"], 6.4232, 4)
    assert close(result["ss_total"], 1112, 4) and result["n"] - 1 == 23


# --- Tukey HSD ----------------------------------------------------------------------------------------
# Source: statsmodels/stats/tests/test_pairwise.py (statsmodels 0.15.0): the StressReduction data (three
# treatments of ten) and R `TukeyHSD(aov(StressReduction ~ Treatment))` in TestTuckeyHSD2 (all rows,
# 95 %) and TestTuckeyHSD2s (rows 3 to 28, unbalanced, 99 %); R reports level2 − level1.

STRESS = pd.DataFrame({
    "Treatment": ["mental"] * 10 + ["physical"] * 10 + ["medical"] * 10,
    "StressReduction": [2, 2, 3, 4, 4, 5, 3, 4, 4, 4, 4, 4, 3, 5, 4, 1, 1, 2, 3, 3,
                        1, 2, 2, 2, 3, 2, 3, 1, 3, 1],
})


def test_tukey_hsd_reproduces_r_tukeyhsd_balanced():
    got = tukey_hsd(STRESS, "StressReduction", "Treatment", alpha=0.05)
    # R: mental-medical 1.5 [0.3214915, 2.678509] p 0.01056279; physical-medical 1 [-0.1785085, 2.178509]
    #    p 0.1079035; physical-mental -0.5 [-1.678509, 0.6785085] p 0.5513904
    # ours are a − b = medical − mental, medical − physical, mental − physical: R's negated
    r = [(1.5, 0.3214915, 2.678509, 0.01056279), (1.0, -0.1785085, 2.178509, 0.1079035),
         (-0.5, -1.678509, 0.6785085, 0.5513904)]
    for row, (diff, lwr, upr, p) in zip(got.itertuples(), r):
        assert row.mean_diff == pytest.approx(-diff)
        assert row.ci_low == pytest.approx(-upr, rel=5e-7) and row.ci_high == pytest.approx(-lwr, rel=5e-7)
        assert row.p_adj == pytest.approx(p, rel=5e-6)


def test_tukey_kramer_reproduces_r_tukeyhsd_unbalanced():
    got = tukey_hsd(STRESS.iloc[3:29], "StressReduction", "Treatment", alpha=0.01)
    # R (99 %): 1.888889 [0.2658549, 3.511923] p 0.002837638; 0.888889 [-0.5908785, 2.368656] p 0.150456;
    #           -1 [-2.587133, 0.5871331] p 0.1266072
    r = [(1.8888888888888889, 0.2658549, 3.511923, 0.002837638), (0.888888888888889, -0.5908785, 2.368656, 0.150456),
         (-1.0, -2.587133, 0.5871331, 0.1266072)]
    for row, (diff, lwr, upr, p) in zip(got.itertuples(), r):
        assert row.mean_diff == pytest.approx(-diff)
        assert row.ci_low == pytest.approx(-upr, rel=5e-7) and row.ci_high == pytest.approx(-lwr, rel=5e-7)
        assert row.p_adj == pytest.approx(p, rel=5e-6)


# Source: the docstring of scipy.stats.tukey_hsd (scipy 1.17.1), time to relief of three headache
# medicines, data adapted from Hand et al. (1994) via the NIST/SAS example; printed to 3 decimals:
#   (0 - 1) -4.600 p 0.014 [-8.249, -0.951]; (0 - 2) -0.260 p 0.980 [-3.909, 3.389];
#   (1 - 2)  4.340 p 0.020 [ 0.691,  7.989]; at 99 %: (0 - 1) [-9.480, 0.280], (0 - 2) [-5.140, 4.620],
#   (1 - 2) [-0.540, 9.220]

HEADACHE = pd.DataFrame({
    "brand": ["g0"] * 5 + ["g1"] * 5 + ["g2"] * 5,
    "minutes": [24.5, 23.5, 26.4, 27.1, 29.9, 28.4, 34.2, 29.5, 32.2, 30.1, 26.1, 28.3, 24.3, 26.2, 27.8],
})


def test_tukey_hsd_reproduces_the_scipy_docstring_example():
    got = tukey_hsd(HEADACHE, "minutes", "brand", alpha=0.05)
    printed = [(-4.600, 0.014, -8.249, -0.951), (-0.260, 0.980, -3.909, 3.389), (4.340, 0.020, 0.691, 7.989)]
    for row, (diff, p, lo, hi) in zip(got.itertuples(), printed):
        assert close(row.mean_diff, diff, 3) and close(row.p_adj, p, 3)
        assert close(row.ci_low, lo, 3) and close(row.ci_high, hi, 3)
    wide = tukey_hsd(HEADACHE, "minutes", "brand", alpha=0.01)
    for row, (lo, hi) in zip(wide.itertuples(), [(-9.480, 0.280), (-5.140, 4.620), (-0.540, 9.220)]):
        assert close(row.ci_low, lo, 3) and close(row.ci_high, hi, 3)


# --- Games–Howell --------------------------------------------------------------------------------
# Source: statsmodels/stats/tests/test_pairwise.py (statsmodels 0.15.0), `ss2_unequal`: R
# `rstatix::games_howell_test(df, StressReduction ~ Treatment, conf.level = 0.99)` on rows 3 to 28:
#   medical-mental 1.8888888888888888 [0.7123347940930316, 3.0654429836847461] p.adj 0.000196
#   medical-physical 0.8888888888888888 [-0.8105797509636128, 2.5883575287413905] p.adj 0.206000
#   mental-physical -1.0 [-2.6647460755237473, 0.6647460755237473] p.adj 0.127000
# rstatix's estimate is group2 − group1, so ours (a − b) is its negation.

def test_games_howell_reproduces_rstatix():
    got = games_howell(STRESS.iloc[3:29], "StressReduction", "Treatment", alpha=0.01)
    r = [(1.8888888888888888, 0.7123347940930316, 3.0654429836847461, 0.000196),
         (0.8888888888888888, -0.8105797509636128, 2.5883575287413905, 0.206),
         (-1.0, -2.6647460755237473, 0.6647460755237473, 0.127)]
    for row, (est, lo, hi, p) in zip(got.itertuples(), r):
        assert row.mean_diff == pytest.approx(-est, rel=1e-12)
        assert row.ci_low == pytest.approx(-hi, rel=1e-6) and row.ci_high == pytest.approx(-lo, rel=1e-6)
        assert row.p_adj == pytest.approx(p, rel=5e-3)  # rstatix prints p to 3 significant digits


# --- effect-size intervals -------------------------------------------------------------------------
# Source: statsmodels/stats/tests/test_oneway.py (statsmodels 0.15.0), test_effectsize_fstat: R
# `effectsize::F_to_eta2(45.8, 3, 35)` with the 90 % interval: Eta2_partial 0.796983758700696,
# CI 0.685670133284926 to 0.855981325777856.

def test_partial_eta2_interval_reproduces_r_effectsize():
    lo, hi = partial_eta2_ci(45.8, 3, 35, alpha=0.10)
    assert lo == pytest.approx(0.685670133284926, rel=2e-7)
    assert hi == pytest.approx(0.855981325777856, rel=2e-7)


# --- one-way ANOVA ---------------------------------------------------------------------------------
# Source: the docstring of scipy.stats.f_oneway (scipy 1.17.1): McDonald et al. (1991) mussel shell data
# (Mytilus trossulus, five locations), as in McDonald's Handbook of Biological Statistics:
# F_onewayResult(statistic=7.121019471642447, pvalue=0.0002812242314534544).

MUSSELS = {
    "tillamook": [0.0571, 0.0813, 0.0831, 0.0976, 0.0817, 0.0859, 0.0735, 0.0659, 0.0923, 0.0836],
    "newport": [0.0873, 0.0662, 0.0672, 0.0819, 0.0749, 0.0649, 0.0835, 0.0725],
    "petersburg": [0.0974, 0.1352, 0.0817, 0.1016, 0.0968, 0.1064, 0.105],
    "magadan": [0.1033, 0.0915, 0.0781, 0.0685, 0.0677, 0.0697, 0.0764, 0.0689],
    "tvarminne": [0.0703, 0.1026, 0.0956, 0.0973, 0.1039, 0.1045],
}


def test_oneway_anova_reproduces_mcdonalds_mussel_example():
    df = pd.DataFrame([(k, v) for k, vs in MUSSELS.items() for v in vs], columns=["site", "scar"])
    got = oneway_anova(df, "scar", "site")
    assert got["F"] == pytest.approx(7.121019471642447, rel=1e-12)
    assert got["p"] == pytest.approx(0.0002812242314534544, rel=1e-9)
    assert got["df"] == (4, 34)


# --- correlation and rank tests --------------------------------------------------------------------
# Source: the docstring of scipy.stats.pearsonr (scipy 1.17.1): x = 1..7, y = [10, 9, 2.5, 6, 4, 3, 2],
# r = -0.828503883588428, p = 0.021280260007523286, asymptotic (Fisher z) 90 % interval
# -0.9644331982722841 to -0.3460237473272273.

def test_pearson_reproduces_the_scipy_docstring_example():
    got = correlation([1, 2, 3, 4, 5, 6, 7], [10, 9, 2.5, 6, 4, 3, 2], alpha=0.10)
    assert got["r"] == pytest.approx(-0.828503883588428, rel=1e-12)
    assert got["p"] == pytest.approx(0.021280260007523286, rel=1e-9)
    assert got["ci_low"] == pytest.approx(-0.9644331982722841, rel=1e-12)
    assert got["ci_high"] == pytest.approx(-0.3460237473272273, rel=1e-12)


# Source: the docstring of scipy.stats.mannwhitneyu (scipy 1.17.1), after its reference [4] (age at
# diagnosis of type II diabetes): males [19, 22, 16, 29, 24], females [20, 11, 17, 12];
# U_M = 17, U_F = 3, exact two-sided p = 0.11 (printed 0.1111111111111111), normal approximation with
# continuity correction 0.11134688653314041.

def test_mann_whitney_reproduces_the_diabetes_example():
    df = pd.DataFrame({"sex": ["m"] * 5 + ["f"] * 4, "age": [19, 22, 16, 29, 24, 20, 11, 17, 12]})
    exact = mann_whitney(df, "age", "sex", "m", "f", method="exact")
    assert exact["U"] == 17 and exact["n_a"] * exact["n_b"] - exact["U"] == 3
    assert exact["p"] == pytest.approx(0.1111111111111111, rel=1e-12) and close(exact["p"], 0.11, 2)
    approx = mann_whitney(df, "age", "sex", "m", "f", method="asymptotic")
    assert approx["p"] == pytest.approx(0.11134688653314041, rel=1e-9)
    assert np.isfinite(exact["hodges_lehmann"])

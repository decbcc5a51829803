"""The tests reviewers ask for, as plain functions: pandas in, plain dicts and DataFrames out.

No ORM, no Django, and no import of `analysis.stats` (which imports `round_to_precision` from here).
Estimation is statsmodels (formula OLS, `anova_lm`, TTestIndPower, Welch's ANOVA) and scipy
(distributions, Tukey HSD, rank and correlation tests). Every interval is at level 1 − `alpha`
(two-sided unless `alternative` is one-sided); rows with a missing value in a column that a function
uses are dropped (complete cases) and the n used is returned.

Group levels are the categorical order when the column is categorical, else sorted; pair rows
(a, b) follow that order with a before b, and differences are a − b, as in `analysis.stats`.
The formulas and choices are written up in docs/analysis.md, section "Inference library".
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.oneway import anova_oneway
from statsmodels.stats.power import TTestIndPower

ALTERNATIVES = ("two-sided", "less", "greater")
#: statsmodels spells one-sided alternatives "smaller" / "larger".
SM_ALTERNATIVE = {"two-sided": "two-sided", "less": "smaller", "greater": "larger"}
PRE, POST = "pre_test", "post_test"


# --- helpers ---------------------------------------------------------------------------------------

def check_alternative(alternative: str) -> str:
    """Return `alternative` if it is one of ALTERNATIVES, else raise ValueError."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative is one of {ALTERNATIVES}, not {alternative!r}")
    return alternative


def _levels(values: pd.Series, keep_empty: bool = False) -> list:
    """Return the group levels: categorical order (unused categories too if `keep_empty`), else sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if keep_empty or (values == c).any()]
    return sorted(values.dropna().unique().tolist())


def _samples(df: pd.DataFrame, outcome: str, group: str, precision=None, keep_empty: bool = False) -> dict:
    """Return {level: float array of the non-missing outcome values}, rounded to `precision` if given."""
    y = pd.to_numeric(df[outcome], errors="coerce")
    out = {}
    for lv in _levels(df[group], keep_empty):
        v = y[df[group] == lv].to_numpy(dtype=float)
        out[lv] = round_to_precision(v[~np.isnan(v)], precision)
    return out


def _t_interval(est: float, se: float, dof: float, alpha: float, alternative: str) -> tuple[float, float]:
    """Return the t interval for `est`: two-sided ± t_{1−α/2}·se, or one-sided bound with t_{1−α}."""
    if alternative == "two-sided":
        half = sps.t.ppf(1 - alpha / 2, dof) * se
        return est - half, est + half
    bound = sps.t.ppf(1 - alpha, dof) * se
    return (est - bound, math.inf) if alternative == "greater" else (-math.inf, est + bound)


# --- precision -------------------------------------------------------------------------------------

def score_precision(n_items: int) -> float:
    """Return the precision of a proportion-correct score on `n_items` items: 1 / n_items."""
    if int(n_items) != n_items or n_items < 1:
        raise ValueError("n_items must be a positive whole number")
    return 1.0 / int(n_items)


def round_to_precision(values, precision: float | None):
    """Return `values` rounded to the nearest multiple of `precision` (None: returned unchanged).

    v ↦ round(v / precision) · precision, then rounded to 12 decimals so that equal multiples are
    equal floats: 0.8 − 0.7 (0.10000000000000009) and 0.7 − 0.6 (0.09999999999999998) both become
    0.1 at precision 0.1 and tie in a rank test. The precision is the instrument's own grid, always
    given, never inferred from the data: 1 / n_items for a proportion-correct score
    (`score_precision`), and for a gain of two such scores the finer grid of the two (1/lcm of the
    item counts when pre- and post-test differ in length). NaN stays NaN. A Series keeps its index.
    """
    if precision is None:
        return values
    if not precision > 0:
        raise ValueError("precision must be a positive number (or None)")
    arr = np.asarray(values, dtype=float)
    out = np.round(np.round(arr / precision) * precision, 12)
    if isinstance(values, pd.Series):
        return pd.Series(out, index=values.index, name=values.name)
    return out


# --- multiplicity ----------------------------------------------------------------------------------

#: The family-wise interval that matches each p-value adjustment: Holm's step-down has no simultaneous
#: interval of its own, and the single-step Bonferroni (Šidák) interval is the one that covers with
#: the family-wise guarantee Holm (Holm–Šidák) gives its tests.
CI_ADJUSTMENT = {"holm": "bonferroni", "bonferroni": "bonferroni", "sidak": "sidak", "holm-sidak": "sidak"}


def ci_alpha(alpha: float, m: int, ci: str, method: str) -> tuple[float, str]:
    """Return the per-interval α and its label for `ci` "adjusted" or "unadjusted" over `m` intervals.

    "unadjusted": α itself, label "unadjusted". "adjusted": Bonferroni α/m for `method` holm or
    bonferroni, Šidák 1 − (1 − α)^(1/m) for sidak or holm-sidak; other methods (the FDR ones) have no
    family-wise interval and are refused.
    """
    if ci == "unadjusted":
        return alpha, "unadjusted"
    if ci != "adjusted":
        raise ValueError('ci is "adjusted" or "unadjusted"')
    if method not in CI_ADJUSTMENT:
        raise ValueError(f"no adjusted interval matches method {method!r}; use holm, bonferroni, sidak or holm-sidak")
    kind = CI_ADJUSTMENT[method]
    m = max(int(m), 1)
    return (alpha / m if kind == "bonferroni" else 1 - (1 - alpha) ** (1 / m)), kind


# --- descriptives ----------------------------------------------------------------------------------

def describe(df: pd.DataFrame, outcome: str, group: str = "arm", ddof: int = 1, alpha: float = 0.05) -> pd.DataFrame:
    """Return per group: n, mean, sd (with the stated `ddof`), ddof, se, ci_low, ci_high, median.

    sd = sqrt(Σ(y − ȳ)² / (n − ddof)): ddof = 1 is the sample SD (the usual choice for a study's
    participants), ddof = 0 the population SD. se = s/√n and the interval ȳ ± t_{1−α/2, n−1}·se
    always use the sample SD s (ddof = 1), because that is what the t interval is defined with; so
    `ddof` changes the sd column only. Unused categories of a categorical group are listed with
    n = 0 and NaN; sd is NaN when n ≤ ddof, se and the interval when n < 2.
    """
    rows = []
    for lv, v in _samples(df, outcome, group, keep_empty=True).items():
        n = len(v)
        mean = float(v.mean()) if n else math.nan
        sd = float(v.std(ddof=ddof)) if n > ddof else math.nan
        s = float(v.std(ddof=1)) if n > 1 else math.nan
        se = s / math.sqrt(n) if n > 1 else math.nan
        lo, hi = _t_interval(mean, se, n - 1, alpha, "two-sided") if n > 1 else (math.nan, math.nan)
        rows.append({group: lv, "n": n, "mean": mean, "sd": sd, "ddof": ddof, "se": se,
                     "ci_low": lo, "ci_high": hi, "median": float(np.median(v)) if n else math.nan})
    return pd.DataFrame(rows, columns=[group, "n", "mean", "sd", "ddof", "se", "ci_low", "ci_high", "median"])


# --- linear models ---------------------------------------------------------------------------------

def _typ(typ) -> int:
    """Return the sums-of-squares type as 1, 2 or 3."""
    table = {1: 1, 2: 2, 3: 3, "I": 1, "II": 2, "III": 3}
    if typ not in table:
        raise ValueError("typ is 1, 2 or 3 (or 'I', 'II', 'III')")
    return table[typ]


def _is_categorical(column: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def sum_coded_formula(formula: str, data: pd.DataFrame) -> str:
    """Return `formula` with every categorical factor in sum-to-zero (deviation) coding, terms expanded.

    A bare column name of non-numeric or boolean dtype, or `C(name)` without a coding, becomes
    `C(name, Sum)`; `C(name, Sum)` is kept; any other explicit coding (`C(x, Treatment)`) is refused,
    since Type III tests of main effects are only meaningful with contrasts that sum to zero.
    Numeric covariates are kept as written (Type III tests of terms that interact with a covariate
    are tests at covariate = 0: centre the covariate first if that is not the point of interest).
    """
    import patsy

    desc = patsy.ModelDesc.from_formula(formula)

    def recode(code: str) -> str:
        name = code
        quoted = re.fullmatch(r"Q\((['\"])(.+)\1\)", code)
        if quoted:
            name = quoted.group(2)
        if name in data.columns:
            return f"C({code}, Sum)" if _is_categorical(data[name]) else code
        bare = re.fullmatch(r"C\(\s*([^,()]+?)\s*\)", code)
        if bare:
            return f"C({bare.group(1)}, Sum)"
        if code.startswith("C(") and not re.search(r",\s*Sum\b", code):
            raise ValueError(f"Type III needs sum-to-zero coding; {code!r} names another coding: use C(x, Sum)")
        return code

    rhs, intercept = [], False
    for term in desc.rhs_termlist:
        if not term.factors:
            intercept = True
            continue
        rhs.append(":".join(recode(f.code) for f in term.factors))
    lhs = " + ".join(":".join(f.code for f in t.factors) for t in desc.lhs_termlist)
    return f"{lhs} ~ {' + '.join(rhs) if rhs else '1'}" + ("" if intercept else " - 1")


def partial_eta2_ci(F: float, df1: float, df2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Return the 1 − α interval for partial η² by inverting the noncentral F distribution.

    With F observed on (df1, df2), find noncentrality λ_L with P(F' ≤ F | λ_L) = 1 − α/2 and λ_U with
    P(F' ≤ F | λ_U) = α/2 (scipy `ncf`, Brent's root finder); a bound is 0 when even λ = 0 cannot
    reach its probability. Each λ bound is read as the F value λ/df1 and converted like the
    estimate, η²_p = F·df1/(F·df1 + df2) = λ/(λ + df2), the conversion of R's effectsize
    (`F_to_eta2`), so the interval always holds the estimate (λ/(λ + N), N = df1 + df2 + 1, as in
    MBESS, gives slightly lower bounds). The interval is two-sided at 1 − α; effectsize now defaults
    to a one-sided one, and Steiger (2004) recommends the 90 % two-sided interval to match an
    α = .05 F test: pass alpha = 0.10 for that.
    """
    if not (np.isfinite(F) and df1 > 0 and df2 > 0):
        return math.nan, math.nan

    def cdf(lam: float) -> float:
        return float(sps.f.cdf(F, df1, df2)) if lam <= 0 else float(sps.ncf.cdf(F, df1, df2, lam))

    def solve(target: float) -> float:
        if cdf(0.0) <= target:
            return 0.0
        upper = max(10.0, 4.0 * F * df1)
        while cdf(upper) > target:
            upper *= 2.0
            if upper > 1e9:
                return math.nan
        return optimize.brentq(lambda lam: cdf(lam) - target, 0.0, upper, xtol=1e-10)

    lam_lo, lam_hi = solve(1 - alpha / 2), solve(alpha / 2)
    return lam_lo / (lam_lo + df2), lam_hi / (lam_hi + df2)


def linear_model(
    df: pd.DataFrame, formula: str, *, typ=2, robust: str | None = None, alpha: float = 0.05,
) -> dict:
    """Fit OLS by formula (patsy via statsmodels `ols`) and return coefficients and the ANOVA table.

    Any number of covariates and factors, as in R: `"post ~ C(arm) + pre + age + prior_ai"`. Rows with
    a missing value in a variable of the formula are dropped (n reports what was used).

    Coefficients (`coefficients`: term, estimate, se, t, p, ci_low, ci_high): classical OLS standard
    errors, or with robust="HC3" MacKinnon–White HC3 (residuals scaled by 1/(1 − h_ii)); t tests and
    intervals on n − p df in both cases (`use_t=True`).

    ANOVA (`anova`: term, sum_sq, df, mean_sq, F, p, eta2, partial_eta2, partial_eta2_ci_low,
    partial_eta2_ci_high, omega2, partial_omega2, f_test), from statsmodels `anova_lm` with
    - typ=1: sequential SS (each term after those before it; order matters when unbalanced), in
      the order patsy builds the design, which puts terms without a numeric factor first
      (`pre + C(arm)` enters arm before pre); the table lists the terms in that order;
    - typ=2 (default): each term after every term not containing it (R `car::Anova` type 2), which
      respects marginality and is the most powerful test of main effects without interactions;
    - typ=3: each term after all others, with categorical factors recoded to sum-to-zero contrasts
      first (`sum_coded_formula`; statsmodels and R would otherwise test treatment-coded simple
      effects), as R `car::Anova(type = 3)` with `contr.sum`. The Intercept row is kept.
    Effect sizes, with SS_total = Σ(y − ȳ)² and MS_res = SS_res/df_res:
    η² = SS_term / SS_total (classic); partial η² = SS_term / (SS_term + SS_res);
    ω² = (SS_term − df_term·MS_res) / (SS_total + MS_res);
    partial ω² = (SS_term − df_term·MS_res) / (SS_term + (n − df_term)·MS_res) (Olejnik & Algina
    2003); ω² can be negative and is reported as computed. The interval for partial η² inverts the
    classical F by the noncentral F (`partial_eta2_ci`).
    With robust="HC3" each term's F and p are the Wald F test of its coefficients with the HC3
    covariance (`anova_lm(..., robust="hc3")`, typ 2 or 3 only; for typ 1 it is refused), and
    `f_test` says "HC3 Wald F"; the sums of squares, η², ω² and the η² interval stay the classical
    ones (a robust F has no sums of squares behind it: statsmodels backs pseudo-SS out of it,
    which are not used here).

    Returns a dict: formula, formula_fitted, typ, coding ("treatment" or "sum-to-zero"), se_type
    ("classical" or "HC3"), anova_test, n, df_model, df_resid, r_squared, adj_r_squared, ss_total,
    alpha, coefficients, anova.
    """
    from statsmodels.formula.api import ols

    typ = _typ(typ)
    if robust not in (None, "HC3"):
        raise ValueError('robust is None or "HC3"')
    if robust and typ == 1:
        raise ValueError("robust F tests exist for Type II and III sums of squares only (statsmodels anova_lm)")
    fitted_formula = sum_coded_formula(formula, df) if typ == 3 else formula
    model = ols(fitted_formula, data=df)
    fit = model.fit()
    if fit.df_resid < 1:
        raise ValueError("the model needs more rows than parameters")
    coef_fit = model.fit(cov_type="HC3", use_t=True) if robust else fit
    ci = np.asarray(coef_fit.conf_int(alpha))
    coefficients = pd.DataFrame({
        "term": list(coef_fit.params.index), "estimate": np.asarray(coef_fit.params),
        "se": np.asarray(coef_fit.bse), "t": np.asarray(coef_fit.tvalues), "p": np.asarray(coef_fit.pvalues),
        "ci_low": ci[:, 0], "ci_high": ci[:, 1],
    })

    table = anova_lm(fit, typ=typ)
    robust_table = anova_lm(fit, typ=typ, robust="hc3") if robust else None
    ss_total = float(fit.centered_tss)
    ss_res, df_res = float(fit.ssr), float(fit.df_resid)
    ms_res = ss_res / df_res
    n = float(fit.nobs)
    rows = []
    for term in table.index:
        ss, dof = float(table.loc[term, "sum_sq"]), float(table.loc[term, "df"])
        if term == "Residual":
            rows.append({"term": term, "sum_sq": ss, "df": dof, "mean_sq": ss / dof, "F": math.nan, "p": math.nan,
                         "f_test": None})
            continue
        F, p = float(table.loc[term, "F"]), float(table.loc[term, "PR(>F)"])
        if robust_table is not None:
            F, p = float(robust_table.loc[term, "F"]), float(robust_table.loc[term, "PR(>F)"])
        row = {"term": term, "sum_sq": ss, "df": dof, "mean_sq": ss / dof, "F": F, "p": p,
               "f_test": "HC3 Wald F" if robust else "classical F"}
        if term != "Intercept":
            classical_F = (ss / dof) / ms_res
            lo, hi = partial_eta2_ci(classical_F, dof, df_res, alpha)
            row.update({
                "eta2": ss / ss_total, "partial_eta2": ss / (ss + ss_res),
                "partial_eta2_ci_low": lo, "partial_eta2_ci_high": hi,
                "omega2": (ss - dof * ms_res) / (ss_total + ms_res),
                "partial_omega2": (ss - dof * ms_res) / (ss + (n - dof) * ms_res),
            })
        rows.append(row)
    anova = pd.DataFrame(rows, columns=["term", "sum_sq", "df", "mean_sq", "F", "p", "eta2", "partial_eta2",
                                        "partial_eta2_ci_low", "partial_eta2_ci_high", "omega2", "partial_omega2",
                                        "f_test"])
    return {
        "formula": formula, "formula_fitted": fitted_formula, "typ": typ,
        "coding": "sum-to-zero" if typ == 3 else "treatment",
        "se_type": robust or "classical", "anova_test": "HC3 Wald F" if robust else "classical F",
        "n": int(fit.nobs), "df_model": float(fit.df_model), "df_resid": df_res,
        "r_squared": float(fit.rsquared), "adj_r_squared": float(fit.rsquared_adj), "ss_total": ss_total,
        "alpha": alpha, "coefficients": coefficients, "anova": anova,
    }


# --- one-way ANOVA and its follow-ups ---------------------------------------------------------------

def _nonempty(samples: dict, least: int = 1) -> tuple[dict, list]:
    kept = {lv: v for lv, v in samples.items() if len(v) >= least}
    return kept, [lv for lv in samples if lv not in kept]


def oneway_anova(df: pd.DataFrame, outcome: str, group: str = "arm") -> dict:
    """Return the classic one-way ANOVA F and Welch's F across the groups, with η² and ω².

    Classic: F = [SS_between/(k − 1)] / [SS_within/(N − k)] on (k − 1, N − k) df.
    Welch (1951): w_i = n_i/s_i², m_w = Σw_i·m_i/Σw_i, A = Σw_i(m_i − m_w)²/(k − 1),
    Λ = Σ(1 − w_i/Σw)²/(n_i − 1), F = A / (1 + 2(k − 2)Λ/(k² − 1)) on (k − 1, (k² − 1)/(3Λ)) df
    (statsmodels `anova_oneway(use_var="unequal")`, R `oneway.test`); it needs n ≥ 2 and s > 0 in
    every group and is NaN otherwise. η² = SS_between/SS_total, ω² = (SS_between − (k − 1)·MS_within)
    / (SS_total + MS_within). Groups with no value are left out and listed in `dropped_groups`.
    """
    samples, dropped = _nonempty(_samples(df, outcome, group, keep_empty=True))
    if len(samples) < 2:
        raise ValueError("one-way ANOVA needs at least two groups with data")
    values = list(samples.values())
    allv = np.concatenate(values)
    k, N = len(values), len(allv)
    if N - k < 1:
        raise ValueError("one-way ANOVA needs more values than groups")
    grand = allv.mean()
    ss_b = float(sum(len(v) * (v.mean() - grand) ** 2 for v in values))
    ss_w = float(sum(((v - v.mean()) ** 2).sum() for v in values))
    ss_t = ss_b + ss_w
    ms_w = ss_w / (N - k)
    F = (ss_b / (k - 1)) / ms_w
    welch = {"welch_F": math.nan, "welch_df": (float(k - 1), math.nan), "welch_p": math.nan}
    if all(len(v) > 1 and v.var(ddof=1) > 0 for v in values):
        w = anova_oneway(values, use_var="unequal", welch_correction=True)
        welch = {"welch_F": float(w.statistic), "welch_df": (float(w.df_num), float(w.df_denom)),
                 "welch_p": float(w.pvalue)}
    return {
        "k": k, "n": N, "levels": list(samples), "dropped_groups": dropped,
        "F": float(F), "df": (float(k - 1), float(N - k)), "p": float(sps.f.sf(F, k - 1, N - k)),
        **welch,
        "ss_between": ss_b, "ss_within": ss_w, "ss_total": ss_t,
        "eta2": ss_b / ss_t if ss_t > 0 else math.nan,
        "omega2": (ss_b - (k - 1) * ms_w) / (ss_t + ms_w) if ss_t > 0 else math.nan,
    }


PAIR_COLUMNS = ["a", "b", "n_a", "n_b", "mean_diff", "se", "df", "q", "p_adj", "ci_low", "ci_high", "ci_level",
                "ci_adjustment"]


def tukey_hsd(df: pd.DataFrame, outcome: str, group: str = "arm", alpha: float = 0.05) -> pd.DataFrame:
    """Return Tukey's HSD for every pair (Tukey–Kramer for unequal n), computed by scipy `tukey_hsd`.

    MS_within pooled over all k groups with N − k df; se = sqrt(MS_within·(1/n_a + 1/n_b)) is the SE
    of mean_diff = m_a − m_b; q = |mean_diff|·√2/se; p_adj = P(Q_{k, N−k} ≥ q), already family-wise
    (no further correction); simultaneous interval mean_diff ± q_{1−α; k, N−k}·se/√2
    (`ci_adjustment` = "tukey"). Groups with no value are left out.
    """
    samples, _ = _nonempty(_samples(df, outcome, group, keep_empty=True))
    if len(samples) < 2:
        raise ValueError("Tukey's HSD needs at least two groups with data")
    levels, values = list(samples), list(samples.values())
    res = sps.tukey_hsd(*values)
    ci = res.confidence_interval(confidence_level=1 - alpha)
    k, N = len(values), sum(len(v) for v in values)
    ms_w = sum(((v - v.mean()) ** 2).sum() for v in values) / (N - k)
    rows = []
    for i, j in itertools.combinations(range(k), 2):
        se = math.sqrt(ms_w * (1 / len(values[i]) + 1 / len(values[j])))
        diff = float(res.statistic[i, j])
        rows.append({
            "a": levels[i], "b": levels[j], "n_a": len(values[i]), "n_b": len(values[j]), "mean_diff": diff,
            "se": se, "df": float(N - k), "q": abs(diff) * math.sqrt(2) / se if se > 0 else math.nan,
            "p_adj": float(res.pvalue[i, j]), "ci_low": float(ci.low[i, j]), "ci_high": float(ci.high[i, j]),
            "ci_level": 1 - alpha, "ci_adjustment": "tukey",
        })
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def games_howell(df: pd.DataFrame, outcome: str, group: str = "arm", alpha: float = 0.05) -> pd.DataFrame:
    """Return the Games–Howell test for every pair: Tukey's studentized range with Welch's SE and df.

    Per pair: se = sqrt(s_a²/n_a + s_b²/n_b), df = se⁴ / [(s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)],
    q = |m_a − m_b|·√2/se, p_adj = P(Q_{k, df} ≥ q) (scipy `studentized_range`, k = number of groups
    with data), interval (m_a − m_b) ± q_{1−α; k, df}·se/√2 (`ci_adjustment` = "games-howell").
    No equal-variance assumption, unlike Tukey's HSD; as R rstatix `games_howell_test`. Every group
    needs n ≥ 2 (groups with no value are left out).
    """
    samples, _ = _nonempty(_samples(df, outcome, group, keep_empty=True))
    if len(samples) < 2:
        raise ValueError("Games–Howell needs at least two groups with data")
    if any(len(v) < 2 for v in samples.values()):
        raise ValueError("Games–Howell needs at least two values in every group")
    k = len(samples)
    rows = []
    for (a, va), (b, vb) in itertools.combinations(samples.items(), 2):
        ua, ub = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
        se = math.sqrt(ua + ub)
        dof = (ua + ub) ** 2 / (ua ** 2 / (len(va) - 1) + ub ** 2 / (len(vb) - 1)) if se > 0 else math.nan
        diff = float(va.mean() - vb.mean())
        q = abs(diff) * math.sqrt(2) / se if se > 0 else math.nan
        crit = float(sps.studentized_range.ppf(1 - alpha, k, dof)) if se > 0 else math.nan
        rows.append({
            "a": a, "b": b, "n_a": len(va), "n_b": len(vb), "mean_diff": diff, "se": se, "df": dof, "q": q,
            "p_adj": float(sps.studentized_range.sf(q, k, dof)) if se > 0 else math.nan,
            "ci_low": diff - crit * se / math.sqrt(2), "ci_high": diff + crit * se / math.sqrt(2),
            "ci_level": 1 - alpha, "ci_adjustment": "games-howell",
        })
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# --- correlation -----------------------------------------------------------------------------------

def correlation(x, y, method: str = "pearson", alternative: str = "two-sided", alpha: float = 0.05) -> dict:
    """Return Pearson's r or Spearman's ρ with its p-value and a Fisher-z interval.

    r and p are scipy `pearsonr` / `spearmanr` (p from the t distribution on n − 2 df, for Spearman
    an approximation), with `alternative` ("greater": ρ > 0). Pairs with a missing value are dropped.
    Interval: z = atanh(r), se = 1/sqrt(n − 3) for Pearson (Fisher 1921) and, for Spearman,
    se = sqrt((1 + ρ²/2)/(n − 3)) (Bonett & Wright 2000), whose plain Fisher se is too narrow for ρ;
    two-sided tanh(z ± z_{1−α/2}·se), one-sided [tanh(z − z_{1−α}·se), 1] for "greater" and
    [−1, tanh(z + z_{1−α}·se)] for "less". Needs n ≥ 4.
    """
    check_alternative(alternative)
    if method not in ("pearson", "spearman"):
        raise ValueError('method is "pearson" or "spearman"')
    xs = pd.to_numeric(pd.Series(np.asarray(x)), errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(pd.Series(np.asarray(y)), errors="coerce").to_numpy(dtype=float)
    if len(xs) != len(ys):
        raise ValueError("x and y differ in length")
    ok = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[ok], ys[ok]
    n = len(xs)
    if n < 4:
        raise ValueError("a correlation interval needs at least four complete pairs")
    if method == "pearson":
        res = sps.pearsonr(xs, ys, alternative=alternative)
        r, p = float(res.statistic), float(res.pvalue)
        se = 1 / math.sqrt(n - 3)
        ci_method = "Fisher z"
    else:
        res = sps.spearmanr(xs, ys, alternative=alternative)
        r, p = float(res.statistic), float(res.pvalue)
        se = math.sqrt((1 + r ** 2 / 2) / (n - 3))
        ci_method = "Fisher z, Bonett–Wright se"
    with np.errstate(divide="ignore"):
        z = float(np.arctanh(r))
    if alternative == "two-sided":
        h = sps.norm.ppf(1 - alpha / 2) * se
        lo, hi = math.tanh(z - h), math.tanh(z + h)
    elif alternative == "greater":
        lo, hi = math.tanh(z - sps.norm.ppf(1 - alpha) * se), 1.0
    else:
        lo, hi = -1.0, math.tanh(z + sps.norm.ppf(1 - alpha) * se)
    return {"method": method, "n": n, "r": r, "p": p, "alternative": alternative, "ci_low": lo, "ci_high": hi,
            "ci_level": 1 - alpha, "ci_method": ci_method}


# --- two-group rank test ---------------------------------------------------------------------------

def mann_whitney(
    df: pd.DataFrame, outcome: str, group: str, a, b, alternative: str = "two-sided",
    precision: float | None = None, method: str = "auto", alpha: float = 0.05,
) -> dict:
    """Return the Mann–Whitney U test of group `a` against `b`, on scores rounded to `precision`.

    Values are first rounded to the instrument's precision (`round_to_precision`), so that scores
    equal on paper tie. U = U_a = #{a_i > b_j} + ½·#{a_i = b_j}; p from scipy `mannwhitneyu` with
    `alternative` ("greater": a tends to be larger) and `method` ("auto": exact without ties for
    small samples, else the normal approximation with tie and continuity correction).
    Effect sizes: common-language P(a > b) + ½P(a = b) = U/(n_a·n_b); rank-biserial
    r = 2U/(n_a·n_b) − 1. Location shift: the Hodges–Lehmann estimate median(a_i − b_j) with the
    distribution-free interval [d_(C), d_(N + 1 − C)] over the sorted N = n_a·n_b differences,
    C = round(N/2 − z·sqrt(N(n_a + n_b + 1)/12)) (Hollander & Wolfe, large-sample form, ties not
    corrected, so approximate on heavily tied scores), z = z_{1−α/2}; one-sided: only the bound on
    the alternative's side, with z_{1−α}, the other end infinite.
    """
    check_alternative(alternative)
    y = pd.to_numeric(df[outcome], errors="coerce")
    xa = y[df[group] == a].dropna().to_numpy(dtype=float)
    xb = y[df[group] == b].dropna().to_numpy(dtype=float)
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError(f"Mann–Whitney needs values in both groups (n = {len(xa)}, {len(xb)})")
    xa, xb = round_to_precision(xa, precision), round_to_precision(xb, precision)
    res = sps.mannwhitneyu(xa, xb, alternative=alternative, method=method)
    u, na, nb = float(res.statistic), len(xa), len(xb)
    N = na * nb
    diffs = np.sort(np.subtract.outer(xa, xb).ravel())
    z = sps.norm.ppf(1 - alpha / 2 if alternative == "two-sided" else 1 - alpha)
    c = int(round(N / 2 - z * math.sqrt(N * (na + nb + 1) / 12)))
    lower = float(diffs[c - 1]) if c >= 1 else -math.inf
    upper = float(diffs[N - c]) if c >= 1 else math.inf
    if alternative == "greater":
        upper = math.inf
    elif alternative == "less":
        lower = -math.inf
    return {
        "a": a, "b": b, "n_a": na, "n_b": nb, "U": u, "p": float(res.pvalue), "alternative": alternative,
        "precision": precision, "method": method,
        "median_a": float(np.median(xa)), "median_b": float(np.median(xb)),
        "common_language": u / N, "rank_biserial": 2 * u / N - 1,
        "hodges_lehmann": float(np.median(diffs)), "ci_low": lower, "ci_high": upper, "ci_level": 1 - alpha,
    }


# --- planning --------------------------------------------------------------------------------------

def power_unequal(
    effect_size: float,
    ratios: Mapping | Sequence[float],
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: Sequence[tuple] | str | None = None,
    alternative: str = "two-sided",
    pre_post_r: float = 0.0,
) -> dict:
    """Return the participants per arm for allocation `ratios` and a family of planned comparisons.

    `ratios`: the allocation weights, {arm: weight} or a sequence (arms are then named 0, 1, …),
    e.g. [3, 1, 1, 1, 1]. `comparisons`: the planned pairs (a, b); None = every other arm against the
    first (the reference), "all" = every pair. The family is corrected by Bonferroni: each test at
    α/m with m = the number of planned comparisons (valid whatever the correlation between tests;
    conservative for Holm, which the analysis may use). `effect_size` is Cohen's d of a − b in the
    hypothesised direction (positive for "greater", negative for "less").

    For each pair, statsmodels `TTestIndPower().solve_power(..., ratio = w_b/w_a)` gives the exact
    n_a (two-sample t, noncentral t, n_b = ratio·n_a) at level α/m; times the ANCOVA design effect
    (1 − r²) with r = `pre_post_r` (Borm et al. 2007; 0 = a t test on the outcome). The largest
    n_a/w_a over the pairs is the n per weight unit u that every comparison needs, and each arm gets
    ceil(u·w_k) participants. `comparisons` reports each pair's exact n and the power it reaches
    with the rounded n (d/sqrt(1 − r²) standing in for the covariate adjustment); `binding` is the
    pair that set u.
    """
    check_alternative(alternative)
    weights = dict(ratios) if isinstance(ratios, Mapping) else dict(enumerate(ratios))
    if len(weights) < 2 or any(not w > 0 for w in weights.values()):
        raise ValueError("ratios needs at least two arms with positive weights")
    if not 0 <= abs(pre_post_r) < 1:
        raise ValueError("pre_post_r must lie in (-1, 1)")
    arms = list(weights)
    if comparisons is None:
        pairs = [(arms[0], arm) for arm in arms[1:]]
    elif comparisons == "all":
        pairs = list(itertools.combinations(arms, 2))
    else:
        pairs = [tuple(p) for p in comparisons]
    unknown = {arm for p in pairs for arm in p} - set(arms)
    if not pairs or unknown:
        raise ValueError(f"comparisons must name pairs of arms in ratios (unknown: {sorted(map(str, unknown))})")
    m = len(pairs)
    level = alpha / m
    design_effect = 1.0 - pre_post_r ** 2
    solver = TTestIndPower()
    alt = SM_ALTERNATIVE[alternative]
    exact = []
    for a, b in pairs:
        ratio = weights[b] / weights[a]
        n_a = float(solver.solve_power(effect_size=effect_size, nobs1=None, alpha=level, power=power, ratio=ratio,
                                       alternative=alt)) * design_effect
        exact.append((a, b, ratio, n_a))
    units = [n_a / weights[a] for a, _, _, n_a in exact]
    unit = max(units)
    per_arm = {arm: math.ceil(unit * w - 1e-9) for arm, w in weights.items()}
    rows = []
    for a, b, ratio, n_a in exact:
        reached = float(solver.power(effect_size=effect_size / math.sqrt(design_effect), nobs1=per_arm[a],
                                     alpha=level, ratio=per_arm[b] / per_arm[a], alternative=alt))
        rows.append({"a": a, "b": b, "ratio": ratio, "n_a_exact": n_a, "n_b_exact": n_a * ratio,
                     "n_a": per_arm[a], "n_b": per_arm[b], "power": reached})
    binding = exact[int(np.argmax(units))][:2]
    return {
        "n_per_arm": per_arm, "n_total": sum(per_arm.values()), "weights": weights, "unit": unit,
        "comparisons": pd.DataFrame(rows), "binding": binding, "m": m, "correction": "bonferroni",
        "alpha": alpha, "alpha_per_comparison": level, "power": power, "effect_size": effect_size,
        "alternative": alternative, "pre_post_r": pre_post_r, "design_effect": design_effect,
    }


# --- per-concept gain ------------------------------------------------------------------------------

def _as_float(values: pd.Series) -> pd.Series:
    return pd.Series([math.nan if pd.isna(v) else float(v) for v in values], index=values.index, dtype=float)


def concept_gain(responses: pd.DataFrame) -> pd.DataFrame:
    """Return per participant and concept: pseudonym, [arm,] concept, n_pre, n_post, pre, post, gain.

    Input: the export's `responses` frame (columns pseudonym, phase, concept, correct, score; `arm` is
    carried through when present). A response's outcome is `correct` as 0/1, falling back to `score`
    where `correct` is missing (the convention of `analysis.measures`); pre / post are the proportion
    correct over the participant's answers to that concept's items in the pre-test / post-test, n_pre
    and n_post how many answers that is, gain = post − pre (NaN when the concept was not tested in both
    phases). Questionnaire answers, unscored answers and items without a concept are left out. Which
    participants count (completed, not simulated) is the caller's choice: filter the frame first.
    """
    need = {"pseudonym", "phase", "concept"}
    missing = need - set(responses.columns)
    if missing or not {"correct", "score"} & set(responses.columns):
        raise ValueError(f"responses lacks {sorted(missing) or ['correct or score']}")
    score = _as_float(responses["score"]) if "score" in responses else pd.Series(math.nan, index=responses.index)
    y = _as_float(responses["correct"]).fillna(score) if "correct" in responses else score
    concept = responses["concept"].astype("string").str.strip()
    keys = ["pseudonym", "arm", "concept"] if "arm" in responses else ["pseudonym", "concept"]
    data = responses.assign(y=y, concept=concept)
    data = data[data["phase"].isin([PRE, POST]) & data["y"].notna() & data["concept"].notna() & (data["concept"] != "")]
    stats = data.groupby(keys + ["phase"], observed=True)["y"].agg(["mean", "count"]).unstack("phase")
    out = pd.DataFrame(index=stats.index)
    for phase, name in ((PRE, "pre"), (POST, "post")):
        out[f"n_{name}"] = stats["count"][phase].fillna(0).astype(int) if ("count", phase) in stats else 0
        out[name] = stats["mean"][phase] if ("mean", phase) in stats else math.nan
    out["gain"] = out["post"] - out["pre"]
    out = out.reset_index()
    out["concept"] = out["concept"].astype(object)
    return out.sort_values(keys).reset_index(drop=True)[[*keys, "n_pre", "n_post", "pre", "post", "gain"]]

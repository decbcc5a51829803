"""Inferential statistics for the paper, on the frames of `analysis.measures`.

Pandas in, plain dicts and DataFrames out: no ORM, no Django. Estimation is statsmodels (OLS, GEE,
multipletests, TTestIndPower) and scipy (distributions, Kruskal–Wallis, Mann–Whitney). Every
interval is two-sided 95 % unless `alpha` says otherwise; p-values are two-sided. Rows with a
missing outcome, covariate or group are dropped (complete-case analysis) and the n used is reported.

Design matrices are built here with explicit dummy coding rather than through a formula string, so
arm names with spaces or symbols need no quoting and each column's meaning is visible in the code.
The choices behind every function are written up in docs/analysis.md.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.genmod import families
from statsmodels.genmod.cov_struct import Exchangeable, Independence
from statsmodels.genmod.generalized_estimating_equations import GEE
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from analysis.inference import SM_ALTERNATIVE, check_alternative, ci_alpha, round_to_precision

PRE, POST = "pre_test", "post_test"


# --- helpers ---------------------------------------------------------------------------------------

def _levels(values: pd.Series, reference=None) -> list:
    """Return the group levels, reference first: categorical order if categorical, else sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = [c for c in values.cat.categories if (values == c).any()]
    else:
        levels = sorted(values.dropna().unique().tolist())
    if reference is not None:
        if reference not in levels:
            raise ValueError(f"reference {reference!r} is not one of the groups {levels}")
        levels = [reference] + [lv for lv in levels if lv != reference]
    return levels


def _values(df: pd.DataFrame, group: str, level, outcome: str) -> np.ndarray:
    """Return the non-missing `outcome` values of rows where `group == level`, as floats."""
    v = pd.to_numeric(df.loc[df[group] == level, outcome], errors="coerce").to_numpy(dtype=float)
    return v[~np.isnan(v)]


def adjust_p(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
    """Return multiplicity-adjusted p-values (statsmodels `multipletests`; Holm's step-down by default).

    Holm: sort p ascending, multiply the i-th smallest (i = 0..m−1) by (m − i), take the running
    maximum, cap at 1, and put the values back in the input order. NaNs are passed through.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


# --- ANCOVA ----------------------------------------------------------------------------------------

def ancova(
    df: pd.DataFrame,
    outcome: str = "post",
    covariate: str = "pre",
    group: str = "arm",
    reference=None,
    contrasts: Mapping[str, Mapping | Sequence[float]] | None = None,
    alpha: float = 0.05,
) -> dict:
    """Fit OLS  outcome = b0 + Σ_k b_k·[arm = k] + c·covariate + e  and return the ANCOVA results.

    Coding: treatment (dummy) coding against `reference` (default: the first level — categorical
    order, else alphabetical); the covariate is entered uncentred. Classical (homoscedastic) OLS
    standard errors, t reference distribution with n − k − 1 df.

    Returns a dict with
    - `n`, `df_resid`, `levels` (reference first), `reference`, `r_squared`;
    - `slope`: dict(estimate, se, t, p, ci_low, ci_high) of the covariate;
    - `adjusted_means`: DataFrame arm, n, mean (raw), adjusted_mean, se, ci_low, ci_high, where the
      adjusted mean of arm k is the model's prediction at the grand mean of the covariate over the
      analysed rows: b0 + b_k + c·x̄ (its SE from L·Cov(b)·Lᵀ);
    - `contrasts`: DataFrame contrast ("k - reference"), estimate (= b_k, the difference of adjusted
      means), se, t, p, ci_low, ci_high, p_holm (Holm over the arm-vs-reference contrasts);
    - `planned`: the same columns without p_holm for each `contrasts` entry. A planned contrast is a
      vector of weights on the adjusted means, given as {arm: weight} (missing arms weigh 0) or a
      sequence in `levels` order; estimate = Σ_k w_k·adjusted_mean_k. Weights should sum to 0 (then
      the covariate term cancels); p-values of planned contrasts are not adjusted;
    - `arm_F`, `arm_df` (k − 1, df_resid), `arm_p`: the F test of the arm term adjusted for the
      covariate, SS_arm = SSE(outcome ~ covariate) − SSE(full);
    - `partial_eta2` = SS_arm / (SS_arm + SSE(full)); `covariate_partial_eta2` likewise with
      SS_cov = SSE(outcome ~ arm) − SSE(full);
    - `slopes_F`, `slopes_p`: the homogeneity-of-regression-slopes check (F test adding
      arm × covariate); a small p warns that the arms' slopes differ and a single adjusted
      difference summarises them poorly.
    """
    data = df[[outcome, covariate, group]].copy()
    data[outcome] = pd.to_numeric(data[outcome], errors="coerce")
    data[covariate] = pd.to_numeric(data[covariate], errors="coerce")
    data = data.dropna().reset_index(drop=True)
    levels = _levels(data[group], reference)
    if len(levels) < 2:
        raise ValueError("ANCOVA needs at least two groups with data")
    reference = levels[0]
    y = data[outcome].to_numpy(dtype=float)
    x = data[covariate].to_numpy(dtype=float)
    dummies = np.column_stack([(data[group] == lv).to_numpy(dtype=float) for lv in levels[1:]])
    ones = np.ones((len(y), 1))
    X = np.column_stack([ones, dummies, x])
    names = ["Intercept", *[f"arm[{lv}]" for lv in levels[1:]], covariate]
    fit = OLS(y, X).fit()
    if fit.df_resid < 1:
        raise ValueError("ANCOVA needs more rows than parameters")
    cov = np.asarray(fit.cov_params())
    b = np.asarray(fit.params)
    tcrit = sps.t.ppf(1 - alpha / 2, fit.df_resid)

    def contrast(L: np.ndarray) -> dict:
        est = float(L @ b)
        se = float(np.sqrt(L @ cov @ L))
        t = est / se if se > 0 else np.nan
        return {
            "estimate": est, "se": se, "t": t, "p": float(2 * sps.t.sf(abs(t), fit.df_resid)),
            "ci_low": float(est - tcrit * se), "ci_high": float(est + tcrit * se),
        }

    xbar = float(x.mean())
    L_mean = {}
    rows = []
    for i, lv in enumerate(levels):
        L = np.zeros(len(b))
        L[0] = 1.0
        if i > 0:
            L[i] = 1.0
        L[-1] = xbar
        L_mean[lv] = L
        c = contrast(L)
        rows.append({
            group: lv, "n": int((data[group] == lv).sum()), "mean": float(y[data[group] == lv].mean()),
            "adjusted_mean": c["estimate"], "se": c["se"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
        })
    adjusted = pd.DataFrame(rows)

    vs_ref = []
    for i, lv in enumerate(levels[1:], start=1):
        L = np.zeros(len(b))
        L[i] = 1.0
        vs_ref.append({"contrast": f"{lv} - {reference}", **contrast(L)})
    vs_ref = pd.DataFrame(vs_ref)
    vs_ref["p_holm"] = adjust_p(vs_ref["p"], "holm")

    planned = []
    for name, weights in (contrasts or {}).items():
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(levels)
            if unknown:
                raise ValueError(f"contrast {name!r} names unknown arms {sorted(unknown)}")
            w = [float(weights.get(lv, 0.0)) for lv in levels]
        else:
            w = [float(v) for v in weights]
            if len(w) != len(levels):
                raise ValueError(f"contrast {name!r} needs {len(levels)} weights in order {levels}")
        L = sum(wk * L_mean[lv] for wk, lv in zip(w, levels))
        planned.append({"contrast": name, "weights": dict(zip(levels, w)), **contrast(L)})
    planned = pd.DataFrame(planned, columns=["contrast", "weights", "estimate", "se", "t", "p", "ci_low", "ci_high"])

    sse_full = float(fit.ssr)
    sse_no_arm = float(OLS(y, np.column_stack([ones, x])).fit().ssr)
    sse_no_cov = float(OLS(y, np.column_stack([ones, dummies])).fit().ssr)
    ss_arm = sse_no_arm - sse_full
    ss_cov = sse_no_cov - sse_full
    k1 = len(levels) - 1
    arm_F = (ss_arm / k1) / (sse_full / fit.df_resid)

    inter = OLS(y, np.column_stack([X, dummies * x[:, None]])).fit()
    if inter.df_resid >= 1:
        slopes_F = ((sse_full - inter.ssr) / k1) / (inter.ssr / inter.df_resid)
        slopes_p = float(sps.f.sf(slopes_F, k1, inter.df_resid))
    else:
        slopes_F = slopes_p = float("nan")

    slope = contrast(np.eye(len(b))[-1])
    return {
        "n": int(len(y)), "df_resid": float(fit.df_resid), "levels": levels, "reference": reference,
        "r_squared": float(fit.rsquared), "params": pd.Series(b, index=names),
        "slope": slope, "adjusted_means": adjusted, "contrasts": vs_ref, "planned": planned,
        "arm_F": float(arm_F), "arm_df": (k1, float(fit.df_resid)),
        "arm_p": float(sps.f.sf(arm_F, k1, fit.df_resid)),
        "partial_eta2": ss_arm / (ss_arm + sse_full),
        "covariate_partial_eta2": ss_cov / (ss_cov + sse_full),
        "slopes_F": float(slopes_F), "slopes_p": slopes_p,
    }


# --- two-group comparisons -------------------------------------------------------------------------

def welch_t(
    df: pd.DataFrame, group_a, group_b, outcome: str = "gain", group: str = "arm", alpha: float = 0.05,
    alternative: str = "two-sided",
) -> dict:
    """Return Welch's unequal-variance t test of mean(a) − mean(b).

    se = sqrt(s_a²/n_a + s_b²/n_b); t = (m_a − m_b)/se;
    df = se⁴ / [(s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)] (Welch–Satterthwaite);
    p two-sided from t(df); CI = (m_a − m_b) ± t_{1−α/2, df}·se. Computed by statsmodels
    `CompareMeans(...).ttest_ind(usevar="unequal")`. With `alternative` "greater" (H1: m_a > m_b) or
    "less" the p-value is one-sided and so is the interval: [diff − t_{1−α, df}·se, ∞) for
    "greater", (−∞, diff + t_{1−α, df}·se] for "less"; the result names its `alternative`.
    Welch rather than Student because arms (chat vs static) plausibly differ in variance and the
    cost of Welch under equal variances is negligible.
    """
    a = _values(df, group, group_a, outcome)
    b = _values(df, group, group_b, outcome)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's t test needs at least two values per group")
    alt = SM_ALTERNATIVE[check_alternative(alternative)]
    cm = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    t, p, dof = cm.ttest_ind(usevar="unequal", alternative=alt)
    lo, hi = cm.tconfint_diff(alpha=alpha, usevar="unequal", alternative=alt)
    return {
        "a": group_a, "b": group_b, "n_a": len(a), "n_b": len(b),
        "mean_a": float(a.mean()), "mean_b": float(b.mean()),
        "sd_a": float(a.std(ddof=1)), "sd_b": float(b.std(ddof=1)),
        "mean_diff": float(a.mean() - b.mean()), "t": float(t), "df": float(dof), "p": float(p),
        "ci_low": float(lo), "ci_high": float(hi), "alternative": alternative,
    }


def _g(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return Hedges' g along the last axis (arrays of shape (..., n_a) and (..., n_b))."""
    na, nb = a.shape[-1], b.shape[-1]
    va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
    sp = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (a.mean(axis=-1) - b.mean(axis=-1)) / sp
    return np.where(sp > 0, j * d, np.nan)


def hedges_g(a, b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Return Hedges' g of a − b with a seeded bootstrap percentile interval.

    d = (m_a − m_b) / s_p with s_p = sqrt[((n_a − 1)s_a² + (n_b − 1)s_b²) / (n_a + n_b − 2)];
    g = J·d with Hedges' approximation J = 1 − 3 / (4(n_a + n_b) − 9) (within 0.1 % of the exact
    gamma-function factor from n_a + n_b ≥ 10).
    Interval: `n_boot` resamples drawn with replacement *within* each group (group sizes fixed, as
    in the design), g recomputed on each; the α/2 and 1 − α/2 percentiles. Resamples whose pooled
    SD is 0 give no g and are left out (`n_boot_used` reports how many remained). The generator is
    `numpy.random.default_rng(seed)`, so the same seed gives the same interval.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Hedges' g needs at least two values per group")
    na, nb = len(a), len(b)
    sp = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    j = 1.0 - 3.0 / (4.0 * (na + nb) - 9.0)
    d = (a.mean() - b.mean()) / sp if sp > 0 else float("nan")
    lo = hi = float("nan")
    used = 0
    if n_boot and n_boot > 0:
        rng = np.random.default_rng(seed)
        ga = a[rng.integers(0, na, size=(n_boot, na))]
        gb = b[rng.integers(0, nb, size=(n_boot, nb))]
        boots = _g(ga, gb)
        boots = boots[~np.isnan(boots)]
        used = int(boots.size)
        if used:
            lo, hi = (float(v) for v in np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    return {
        "g": float(j * d), "d": float(d), "J": j, "n_a": na, "n_b": nb,
        "ci_low": lo, "ci_high": hi, "n_boot": int(n_boot), "n_boot_used": used, "seed": seed,
    }


def pairwise(
    df: pd.DataFrame, outcome: str = "gain", group: str = "arm", method: str = "holm",
    n_boot: int = 2000, seed: int = 0, precision: float | None = None, ci: str = "unadjusted",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Return every pair of arms (a, b), a before b in level order, with Welch's t and Hedges' g.

    Columns: a, b, n_a, n_b, mean_diff (a − b), ci_low, ci_high (Welch), t, df, p,
    p_adj (`method` over all pairs, Holm by default, statsmodels `multipletests`), g, g_ci_low,
    g_ci_high (bootstrap, `seed` for every pair), ci_level, ci_adjustment. Holm controls the
    family-wise error rate without assuming independence between the pairwise tests, and is
    uniformly more powerful than Bonferroni.

    Intervals (both the Welch and the g interval) are at level 1 − α each with ci="unadjusted"
    (the default; `ci_adjustment` = "unadjusted"), or with ci="adjusted" at the family-wise level
    that matches `method` over the m pairs (`ci_alpha`: Bonferroni 1 − α/m for Holm, so an interval
    excludes 0 whenever Bonferroni would reject, a little less often than Holm does). Every row says
    which, so adjusted p-values never stand next to unadjusted intervals unlabelled.
    `precision` rounds the outcome to the instrument's grid first (`round_to_precision`; None: as is).
    """
    data = df
    if precision is not None:
        data = df.assign(**{outcome: round_to_precision(pd.to_numeric(df[outcome], errors="coerce"), precision)})
    levels = _levels(data[group].dropna())
    pairs = list(itertools.combinations(levels, 2))
    level, label = ci_alpha(alpha, len(pairs), ci, method)
    rows = []
    for a, b in pairs:
        w = welch_t(data, a, b, outcome=outcome, group=group, alpha=level)
        g = hedges_g(_values(data, group, a, outcome), _values(data, group, b, outcome), n_boot=n_boot, seed=seed,
                     alpha=level)
        rows.append({
            "a": a, "b": b, "n_a": w["n_a"], "n_b": w["n_b"], "mean_diff": w["mean_diff"],
            "ci_low": w["ci_low"], "ci_high": w["ci_high"], "t": w["t"], "df": w["df"], "p": w["p"],
            "g": g["g"], "g_ci_low": g["ci_low"], "g_ci_high": g["ci_high"],
            "ci_level": 1 - level, "ci_adjustment": label,
        })
    out = pd.DataFrame(rows, columns=["a", "b", "n_a", "n_b", "mean_diff", "ci_low", "ci_high", "t", "df", "p",
                                      "g", "g_ci_low", "g_ci_high", "ci_level", "ci_adjustment"])
    out.insert(10, "p_adj", adjust_p(out["p"], method))
    return out


def kruskal(
    df: pd.DataFrame, outcome: str, group: str = "arm", method: str = "holm", precision: float | None = None,
) -> dict:
    """Return the Kruskal–Wallis test across arms and Mann–Whitney U follow-ups.

    H (scipy `kruskal`, tie-corrected), df = k − 1, p from χ²(k − 1); effect size
    ε² = H / (n − 1). Follow-ups: for each pair (a, b) the two-sided Mann–Whitney U of a vs b
    (scipy `mannwhitneyu`, method "auto": exact without ties for small samples, else the normal
    approximation with tie and continuity correction), U = U_a = #{a_i > b_j} + ½·#{a_i = b_j},
    rank-biserial r = 2·U_a/(n_a·n_b) − 1 (P(a > b) − P(a < b)), and `method`-adjusted p (Holm).
    `precision` rounds the outcome to the instrument's grid before ranking (`round_to_precision`),
    so that scores equal on paper tie; None ranks the values as they are.
    """
    levels = _levels(df[group].dropna())
    samples = [round_to_precision(_values(df, group, lv, outcome), precision) for lv in levels]
    keep = [(lv, s) for lv, s in zip(levels, samples) if len(s)]
    if len(keep) < 2:
        raise ValueError("Kruskal–Wallis needs at least two groups with data")
    h, p = sps.kruskal(*[s for _, s in keep])
    n = sum(len(s) for _, s in keep)
    rows = []
    for (a, sa), (b, sb) in itertools.combinations(keep, 2):
        u, pu = sps.mannwhitneyu(sa, sb, alternative="two-sided", method="auto")
        rows.append({
            "a": a, "b": b, "n_a": len(sa), "n_b": len(sb), "U": float(u), "p": float(pu),
            "rank_biserial": 2 * float(u) / (len(sa) * len(sb)) - 1,
        })
    pairs = pd.DataFrame(rows)
    pairs.insert(6, "p_adj", adjust_p(pairs["p"], method))
    return {
        "H": float(h), "df": len(keep) - 1, "p": float(p), "n": n,
        "epsilon_squared": float(h) / (n - 1), "pairs": pairs, "precision": precision,
    }


# --- item level ------------------------------------------------------------------------------------

def item_level_model(
    responses_long: pd.DataFrame,
    reference=None,
    item_effects: bool = True,
    method: str = "gee",
    cov_struct: str = "exchangeable",
    cov_type: str = "robust",
    alpha: float = 0.05,
) -> dict:
    """Fit  logit P(correct) = b0 + arm + post + arm × post (+ item)  on item-level answers.

    Input: one row per scored answer with columns pseudonym, arm, phase ("pre_test"/"post_test"),
    item_id, correct (0/1) — `analysis.measures.item_responses` builds it.

    Method "gee" (default): a logistic GEE (statsmodels `GEE`, Binomial family, logit link) with
    an exchangeable working correlation within participant (clusters = pseudonym), items as fixed
    effects (one dummy per item but the first), and robust sandwich standard errors (`cov_type=
    "bias_reduced"` gives the Mancl–DeRouen small-sample correction, advisable under ~40
    participants); Wald z tests and normal intervals. The coefficients are *population-averaged*
    log-odds: `arm[k]:post` is the change from pre- to post-test in the log-odds of a correct answer
    (same item) in arm k minus that change in the reference arm — a difference-in-differences on the
    logit scale; exp(coef) is the ratio of the two arms' pre→post odds ratios. `arm[k]` is the
    pre-test difference (≈ 0 under randomisation); `post` is the reference arm's pre→post change.
    With `item_effects=True`, items everyone in the sample answered the same way (all correct or all
    wrong) are dropped first (their dummy would diverge) and listed in `dropped_items`.

    Method "bayes": statsmodels `BinomialBayesMixedGLM` with crossed random intercepts for
    participant and item, fitted by variational Bayes (`fit_vb`), as a sensitivity analysis. Its
    coefficients are *subject-specific* (conditional on a participant's intercept), larger in
    magnitude than the GEE's by roughly sqrt(1 + 0.346·σ²_participant); it reports posterior means
    and SDs, and the `p`/interval columns are the normal approximation to that posterior, not
    frequentist tests (VB also tends to understate posterior SDs).

    Returns a dict: `method`, `n_obs`, `n_participants`, `n_items`, `levels`, `reference`,
    `coefficients` (DataFrame term, estimate, se, z, p, ci_low, ci_high, odds_ratio),
    `interaction` (the `arm[k]:post` rows), `dropped_items`, and for GEE the working correlation
    `correlation` (exchangeable ρ), for Bayes the variance-component SDs `vc_sd`.
    """
    need = {"pseudonym", "arm", "phase", "item_id", "correct"}
    missing = need - set(responses_long.columns)
    if missing:
        raise ValueError(f"responses_long lacks {sorted(missing)}; build it with measures.item_responses")
    data = responses_long[list(need)].copy()
    data["correct"] = pd.to_numeric(data["correct"], errors="coerce")
    data = data[data["phase"].isin([PRE, POST])].dropna().reset_index(drop=True)
    levels = _levels(data["arm"], reference)
    reference = levels[0]

    dropped = []
    if item_effects:
        rate = data.groupby("item_id")["correct"].mean()
        dropped = sorted(rate.index[(rate == 0) | (rate == 1)].tolist())
        data = data[~data["item_id"].isin(dropped)].reset_index(drop=True)
    # GEE needs each cluster's rows together.
    data = data.sort_values(["pseudonym", "phase", "item_id"], kind="stable").reset_index(drop=True)

    post = (data["phase"] == POST).to_numpy(dtype=float)
    cols = {"Intercept": np.ones(len(data))}
    for lv in levels[1:]:
        cols[f"arm[{lv}]"] = (data["arm"] == lv).to_numpy(dtype=float)
    cols["post"] = post
    for lv in levels[1:]:
        cols[f"arm[{lv}]:post"] = cols[f"arm[{lv}]"] * post
    items = sorted(data["item_id"].astype(str).unique().tolist())
    fixed_names = list(cols)
    if item_effects:
        for it in items[1:]:
            cols[f"item[{it}]"] = (data["item_id"].astype(str) == it).to_numpy(dtype=float)
    X = pd.DataFrame(cols)
    if np.linalg.matrix_rank(X.to_numpy()) < X.shape[1]:
        raise ValueError(
            "the design is not identifiable: phase and item are confounded (each item appears in only one "
            "phase, e.g. forms not counterbalanced); refit with item_effects=False"
        )
    y = data["correct"].to_numpy(dtype=float)
    z = sps.norm.ppf(1 - alpha / 2)
    result = {
        "method": method, "n_obs": int(len(y)), "n_participants": int(data["pseudonym"].nunique()),
        "n_items": len(items), "levels": levels, "reference": reference, "dropped_items": dropped,
    }

    if method == "gee":
        structure = {"exchangeable": Exchangeable, "independence": Independence}[cov_struct]()
        groups = pd.factorize(data["pseudonym"])[0]
        fit = GEE(y, X, groups=groups, family=families.Binomial(), cov_struct=structure).fit(cov_type=cov_type)
        est, se = np.asarray(fit.params), np.asarray(fit.bse)
        result["correlation"] = float(np.ravel(fit.model.cov_struct.dep_params)[0]) if cov_struct == "exchangeable" else 0.0
        result["cov_struct"], result["cov_type"] = cov_struct, cov_type
    elif method == "bayes":
        from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

        people = pd.get_dummies(data["pseudonym"].astype(str), dtype=float)
        item_d = pd.get_dummies(data["item_id"].astype(str), dtype=float)
        exog_vc = np.column_stack([people.to_numpy(), item_d.to_numpy()])
        ident = np.r_[np.zeros(people.shape[1], dtype=int), np.ones(item_d.shape[1], dtype=int)]
        Xf = X[fixed_names]
        model = BinomialBayesMixedGLM(y, Xf.to_numpy(), exog_vc, ident, fep_names=fixed_names,
                                      vcp_names=["participant", "item"])
        fit = model.fit_vb(rng=np.random.default_rng(0))
        k = len(fixed_names)
        est, se = np.asarray(fit.params[:k]), np.asarray(fit.fe_sd)
        X = Xf
        result["vc_sd"] = dict(zip(["participant", "item"], np.exp(np.asarray(fit.vcp_mean)).tolist()))
    else:
        raise ValueError("method is 'gee' or 'bayes'")

    zval = est / se
    coef = pd.DataFrame({
        "term": list(X.columns), "estimate": est, "se": se, "z": zval, "p": 2 * sps.norm.sf(np.abs(zval)),
        "ci_low": est - z * se, "ci_high": est + z * se, "odds_ratio": np.exp(est),
    })
    result["coefficients"] = coef
    result["interaction"] = coef[coef["term"].str.endswith(":post")].reset_index(drop=True)
    return result


# --- planning --------------------------------------------------------------------------------------

def power_next_study(
    effect_size: float, pre_post_r: float, alpha: float = 0.05, power: float = 0.8, k_arms: int = 2,
    comparisons: int = 1,
) -> dict:
    """Return the participants per arm needed to detect `effect_size` (Cohen's d) with ANCOVA.

    n_t = statsmodels `TTestIndPower().solve_power` (two-sided, equal arms, noncentral t) at level
    α / `comparisons` (Bonferroni: pass the number of planned pairwise contrasts when there are more
    than two arms; conservative for Holm); then the ANCOVA design effect
    n_ANCOVA = n_t · (1 − r²) with r the pre–post correlation (Borm, Fransen & Lemmens 2007), since
    adjusting for the pre-test removes r² of the outcome variance. Both are rounded up; the total
    is n_per_arm · k_arms. Borm et al. add one participant for the covariate's degree of freedom;
    that is not added here.
    """
    if not 0 <= abs(pre_post_r) < 1:
        raise ValueError("pre_post_r must lie in (-1, 1)")
    level = alpha / comparisons
    n_t = float(TTestIndPower().solve_power(effect_size=effect_size, alpha=level, power=power, ratio=1.0,
                                            alternative="two-sided"))
    design_effect = 1.0 - pre_post_r ** 2
    n_ancova = n_t * design_effect
    per_arm = math.ceil(n_ancova)
    return {
        "n_per_arm": per_arm, "n_total": per_arm * k_arms,
        "n_ttest_per_arm": math.ceil(n_t), "n_ttest_exact": n_t, "n_ancova_exact": n_ancova,
        "design_effect": design_effect,
        "effect_size": effect_size, "pre_post_r": pre_post_r, "alpha": alpha, "alpha_per_comparison": level,
        "power": power, "k_arms": k_arms, "comparisons": comparisons,
    }


# --- intervals of proportions ----------------------------------------------------------------------

def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Return Wilson's score interval (Wilson 1927) for a proportion of `successes` out of `n`.

    With p = x/n and z = Φ⁻¹(1 − α/2):

        centre = (p + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) · √(p(1 − p)/n + z²/(4n²))

    and the interval is [centre − half, centre + half]. It lies inside [0, 1] by construction (the
    ends are set to exactly 0 at x = 0 and 1 at x = n, where rounding could stray by 1e-17), is
    never empty, and keeps close to its nominal coverage for small n and p near 0 or 1, where the
    Wald interval p ± z·√(p(1 − p)/n) leaves [0, 1] or collapses to a point. Example: 0 of 10 gives
    [0, 0.2775]. `successes` may be fractional (a sum of scores). (NaN, NaN) for n = 0.
    """
    if not n or n <= 0 or math.isnan(float(n)) or math.isnan(float(successes)):
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must lie between 0 and n ({n})")
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def newcombe_interval(x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Return Newcombe's hybrid score interval (1998, method 10) for the difference p1 − p2.

    With d = x1/n1 − x2/n2 and (l_i, u_i) the Wilson intervals of the two proportions:

        lower = d − √((p1 − l1)² + (u2 − p2)²)
        upper = d + √((u1 − p1)² + (p2 − l2)²)

    for independent samples. It stays inside [−1, 1] and keeps its coverage where the Wald interval
    of a difference does not (Newcombe's example: 56/70 − 48/80 = 0.2, [0.0524, 0.3339]).
    (NaN, NaN) when either n is 0.
    """
    l1, u1 = wilson_interval(x1, n1, alpha)
    l2, u2 = wilson_interval(x2, n2, alpha)
    if math.isnan(l1) or math.isnan(l2):
        return float("nan"), float("nan")
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def wilson_mean_interval(values, alpha: float = 0.05, max_n: float | None = None) -> tuple[int, float, float, float]:
    """Return n, the mean and a Wilson score interval for the mean of values in [0, 1] (scores, rates).

    A participant's score is a proportion of items, so an arm's mean score is a proportion too, but
    not of n independent answers: answers are nested in participants. The interval is Wilson's for
    the mean p = x̄ with the effective sample size of the mean (Kish's; Korn & Graubard 1998 use it
    the same way with Clopper–Pearson):

        n_eff = p(1 − p) / (s²/n),   s² the sample variance (ddof = 1),

    i.e. the n of independent 0/1 answers whose binomial variance equals the mean's observed variance
    s²/n. By the Bhatia–Davis inequality a variable in [0, 1] has variance at most p(1 − p), so n_eff
    is at least about n, and n_eff is raised to n: for 0/1 values this is exactly Wilson's interval
    of x out of n. n_eff is capped at `max_n` (the number of answers behind the scores, when known;
    else n), which is also used when s² = 0 (everyone scored the same, including all 0 or all 1).
    The interval stays in [0, 1]; values outside [0, 1] raise ValueError. NaNs are dropped; for n = 0
    the mean and bounds are NaN (one value has no variance: n_eff = `max_n`, or 1).
    """
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return 0, float("nan"), float("nan"), float("nan")
    if (v < 0).any() or (v > 1).any():
        raise ValueError("values must lie in [0, 1]")
    p = float(v.mean())
    cap = float(max_n) if max_n else float(n)
    cap = max(cap, float(n))
    var = float(v.var(ddof=1)) if n > 1 else 0.0
    n_eff = cap if var <= 0 else min(max(p * (1 - p) / (var / n), float(n)), cap)
    low, high = wilson_interval(p * n_eff, n_eff, alpha)
    return n, p, low, high

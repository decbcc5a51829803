"""Write data/loans.csv: 1,000 synthetic loan applications with a fixed seed.

The bank's rule, which the target learns back: approve when the debt ratio is below 0.40,
there are at most 2 late payments and the income is at least 45 k$. Credit history and years of
employment do not enter the rule. 5% of the decisions are flipped at random (noise).

Run: python data/generate.py   (from the study folder or anywhere; it writes next to itself)
"""

from pathlib import Path

import numpy as np

SEED = 20261101
ROWS = 1000
NOISE = 0.05


def main() -> None:
    rng = np.random.default_rng(SEED)
    income = np.round(rng.gamma(shape=6.0, scale=9.0, size=ROWS) + 12, 1)          # k$ a year
    debt_ratio = np.round(np.clip(rng.beta(2.2, 3.5, size=ROWS), 0.01, 0.95), 2)
    credit_history_years = rng.integers(0, 31, size=ROWS)
    late_payments = np.minimum(rng.poisson(1.4, size=ROWS), 9)
    employment_years = rng.integers(0, 36, size=ROWS)

    rule = (debt_ratio < 0.40) & (late_payments <= 2) & (income >= 45)
    flip = rng.random(ROWS) < NOISE
    approved = np.where(rule ^ flip, "yes", "no")

    lines = ["income,debt_ratio,credit_history_years,late_payments,employment_years,approved"]
    for row in zip(income, debt_ratio, credit_history_years, late_payments, employment_years, approved):
        lines.append(f"{row[0]:.1f},{row[1]:.2f},{row[2]},{row[3]},{row[4]},{row[5]}")
    (Path(__file__).resolve().parent / "loans.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

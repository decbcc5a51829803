"""The learner model and the adaptive policy that reads it: pure functions on plain data, no database.

- `model`: the learner model's schema, its start from the pre-test, the rule updates (Bayesian knowledge
  tracing), the next move, and P(right) of an item.
- `play`: the state of play of a conversation (what was taught, which check questions are left), and the
  grading of a participant's answer to a check question (one function for the tutor and the agentic arm).
- `moves`: the templated Markdown of each move and of a check question (the tutor's language, and the
  agentic arm's fallback when its model writes nothing usable).
- `wrapup`: the predictions of the post-test answers and the meeting note, by rule.

The arms (explainers.arms) call these; explainers.services writes what comes of them.
"""
from .model import (  # noqa: F401  (the model's API, as callers import it)
    ACTS, EXPLAINED, MASTERED, PRIOR, SCHEMA, SCHEMA_VERSION, guess_rate, learner_model_initial,
    learner_model_validate, next_move, predict_correct, rule_step, rule_taught, rule_update, update_schema,
)

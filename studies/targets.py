"""Train a study's scikit-learn target from its CSV and compute `from_target` answer keys.

The estimator is always trained from the data in the study folder with an allow-listed class:
nothing is ever unpickled, so a study file cannot run code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field

import importlib

import numpy as np

from studies.spec import ESTIMATOR_TASKS, FROM_TARGET, SpecError, StudyFileInvalid

# The allow-list: name -> "module.Class". scikit-learn is imported only when a target is trained, so
# the many processes that never train one (web, worker, export) start a second faster.
ESTIMATORS = {
    "LogisticRegression": "sklearn.linear_model.LogisticRegression",
    "DecisionTreeClassifier": "sklearn.tree.DecisionTreeClassifier",
    "RandomForestClassifier": "sklearn.ensemble.RandomForestClassifier",
    "GradientBoostingClassifier": "sklearn.ensemble.GradientBoostingClassifier",
    "LinearRegression": "sklearn.linear_model.LinearRegression",
    "Ridge": "sklearn.linear_model.Ridge",
    "DecisionTreeRegressor": "sklearn.tree.DecisionTreeRegressor",
}


def _estimator_class(name: str):
    module, _, cls = ESTIMATORS[name].rpartition(".")
    return getattr(importlib.import_module(module), cls)


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


class TargetError(Exception):
    """The target cannot be trained or asked (bad estimator, params, data or input)."""


@dataclass(frozen=True)
class TrainedTarget:
    sha256: str
    task: str
    classes: list[str]
    estimator: object = field(repr=False, compare=False)
    features: tuple[str, ...] = ()

    def predict(self, rows: list[dict]) -> list:
        """Return the target's output for each row: str labels, or floats for a regressor."""
        if not rows:
            return []
        matrix = np.array([[_number(row, feature) for feature in self.features] for row in rows], dtype=float)
        predictions = self.estimator.predict(matrix)
        if self.task == "classification":
            return [str(p) for p in predictions]
        return [float(p) for p in predictions]


def target_train(target: dict, assets: dict[str, bytes]) -> TrainedTarget:
    """Fit the target (a normalised `spec["target"]`) on its CSV; the same input gives the same hash."""
    name = target.get("estimator")
    if name not in ESTIMATORS:
        raise TargetError(f"estimator '{name}' is not allowed; use one of: {', '.join(ESTIMATORS)}")
    task = ESTIMATOR_TASKS[name]
    cls = _estimator_class(name)
    params = dict(target.get("params") or {})
    seed = target.get("seed", 0)
    accepted = cls().get_params()
    for param, value in params.items():
        if param == "random_state":
            raise TargetError("params.random_state is set by seed")
        if param not in accepted:
            raise TargetError(f"{name} has no parameter '{param}'")
        if isinstance(value, (dict, list)):
            raise TargetError(f"params.{param} must be a scalar")
    if "random_state" in accepted:
        params["random_state"] = seed

    data = posixpath.normpath(target["data"])
    if data not in assets:
        raise TargetError(f"file not found: {data}")
    csv_bytes = assets[data]
    features = list(target["features"])
    label = target["label"]
    matrix, labels = _read_csv(csv_bytes, features, label, task)

    estimator = cls(**params)
    try:
        estimator.fit(matrix, labels)
    except ValueError as exc:  # includes sklearn's InvalidParameterError
        raise TargetError(f"{name} cannot be trained: {exc}") from exc

    predictions = estimator.predict(matrix)
    if task == "classification":
        classes = [str(c) for c in estimator.classes_]
        outputs = [str(p) for p in predictions]
    else:
        classes = []
        outputs = [float(p) for p in predictions]
    fingerprint = {
        "csv_sha256": hashlib.sha256(csv_bytes).hexdigest(),
        "estimator": name,
        "params": {k: v for k, v in params.items() if k != "random_state"},
        "seed": seed,
        "features": features,
        "label": label,
        "sklearn": _sklearn_version(),
        "predictions": outputs,
    }
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return TrainedTarget(
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        task=task,
        classes=classes,
        estimator=estimator,
        features=tuple(features),
    )


# Target kinds answered by another app (which may import this one): kind -> keys function.
# `explainers` registers "llm" when Django starts, so launching asks the model through it.
TARGET_KINDS = {}


def target_kind_register(kind: str, keys) -> None:
    """Register `keys(spec, assets) -> (sha256, {item id: key}, info)` for a target kind."""
    TARGET_KINDS[kind] = keys


def target_keys(spec: dict, assets: dict[str, bytes]) -> tuple[str | None, dict[str, object], dict]:
    """Return (target sha256 or None, {item id: key}, info) for the predict items keyed `from_target`.

    `info` records what else was frozen with the keys (for an `llm` target: the model as reported).
    """
    if not spec.get("target"):
        return None, {}, {}
    kind = spec["target"]["kind"]
    if kind != "sklearn":
        if kind not in TARGET_KINDS:
            raise StudyFileInvalid([SpecError("target.kind", f"no support for '{kind}' targets is installed")])
        return TARGET_KINDS[kind](spec, assets)
    trained = target_train(spec["target"], assets)
    keyed = [(i, item) for i, item in enumerate(spec["items"])
             if item["kind"] == "predict" and item.get("key") == FROM_TARGET]
    predictions = trained.predict([item["input"] for _, item in keyed])
    keys: dict[str, object] = {}
    errors = []
    for (i, item), prediction in zip(keyed, predictions):
        if trained.task == "classification":
            option_ids = [option["id"] for option in item.get("options") or []]
            if prediction not in option_ids:
                errors.append(SpecError(
                    f"items[{i}].key",
                    f"the target predicts '{prediction}', which is not an option id "
                    f"({', '.join(option_ids) or 'no options'})",
                ))
                continue
        keys[item["id"]] = prediction
    if errors:
        raise StudyFileInvalid(errors)
    return trained.sha256, keys, {"kind": "sklearn", "sklearn": _sklearn_version()}


def _read_csv(csv_bytes: bytes, features: list[str], label: str, task: str):
    try:
        text = csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TargetError("the data file is not utf-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    for column in features + [label]:
        if column not in header:
            raise TargetError(f"the data file has no column '{column}'")
    matrix, labels = [], []
    for row_number, row in enumerate(reader, start=2):
        try:
            matrix.append([float(row[f]) for f in features])
            labels.append(row[label].strip() if task == "classification" else float(row[label]))
        except (TypeError, ValueError) as exc:
            raise TargetError(f"row {row_number} of the data file is not numeric where it must be") from exc
    if not matrix:
        raise TargetError("the data file has no rows")
    return np.array(matrix, dtype=float), np.array(labels, dtype=object if task == "classification" else float)


def _number(row: dict, feature: str) -> float:
    if feature not in row:
        raise TargetError(f"input has no value for feature '{feature}'")
    value = row[feature]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetError(f"input value of '{feature}' must be a number")
    return float(value)

"""The sklearn target: allow-listed, deterministic, and the source of `from_target` keys."""

import copy
from pathlib import Path

import numpy as np
import pytest

from studies.spec import ESTIMATOR_TASKS, StudyFileInvalid, study_file_read
from studies.targets import ESTIMATORS, TargetError, target_keys, target_train

EXAMPLE = Path(__file__).resolve().parents[2] / "studies" / "examples" / "loan-approval"

CSV = ("a,b,y\n" + "".join(f"{a},{b},{2 * a - b + 0.5}\n" for a in range(8) for b in range(5))).encode()


@pytest.fixture(scope="module")
def example():
    return study_file_read(EXAMPLE)


def test_allow_list_matches_the_validator():
    assert set(ESTIMATORS) == set(ESTIMATOR_TASKS)


def test_training_is_deterministic(example):
    first = target_train(example.spec["target"], example.assets)
    second = target_train(example.spec["target"], example.assets)
    assert first.sha256 == second.sha256
    assert first.task == "classification"
    assert first.classes == ["no", "yes"]


def test_from_target_keys_match_the_estimator(example):
    sha256, keys, _info = target_keys(example.spec, example.assets)
    trained = target_train(example.spec["target"], example.assets)
    assert sha256 == trained.sha256
    items = [i for i in example.spec["items"] if i["kind"] == "predict" and i["key"] == "from_target"]
    assert sorted(keys) == sorted(i["id"] for i in items) and len(keys) >= 8
    features = example.spec["target"]["features"]
    matrix = np.array([[i["input"][f] for f in features] for i in items], dtype=float)
    assert [keys[i["id"]] for i in items] == [str(p) for p in trained.estimator.predict(matrix)]
    assert set(keys.values()) == {"yes", "no"}


def test_a_different_model_gives_a_different_hash(example):
    target = copy.deepcopy(example.spec["target"])
    base = target_train(target, example.assets).sha256
    target["params"] = {"max_depth": 2}
    assert target_train(target, example.assets).sha256 != base
    assets = dict(example.assets)
    assets["data/loans.csv"] = assets["data/loans.csv"].replace(b",no\n", b",yes\n", 1)
    assert target_train(example.spec["target"], assets).sha256 != base


def test_disallowed_estimator_is_refused(example):
    target = copy.deepcopy(example.spec["target"])
    target["estimator"] = "sklearn.svm.SVC"
    with pytest.raises(TargetError, match="is not allowed"):
        target_train(target, example.assets)


def test_unknown_or_nested_params_are_refused(example):
    target = copy.deepcopy(example.spec["target"])
    target["params"] = {"max_dept": 3}
    with pytest.raises(TargetError, match="no parameter 'max_dept'"):
        target_train(target, example.assets)
    target["params"] = {"max_depth": -1}
    with pytest.raises(TargetError, match="cannot be trained"):
        target_train(target, example.assets)


def test_regression_target_predicts_floats():
    target = {"kind": "sklearn", "estimator": "LinearRegression", "params": {}, "seed": 0,
              "data": "d.csv", "features": ["a", "b"], "label": "y"}
    trained = target_train(target, {"d.csv": CSV})
    assert trained.task == "regression" and trained.classes == []
    [prediction] = trained.predict([{"a": 3, "b": 1}])
    assert isinstance(prediction, float) and prediction == pytest.approx(5.5)


def test_regression_keys_are_floats():
    spec = {
        "target": {"kind": "sklearn", "estimator": "DecisionTreeRegressor", "params": {"max_depth": 8},
                   "seed": 3, "data": "d.csv", "features": ["a", "b"], "label": "y"},
        "items": [{"id": "r1", "kind": "predict", "input": {"a": 2, "b": 4}, "options": None,
                   "key": "from_target", "tolerance": 0.5}],
    }
    sha256, keys, _info = target_keys(spec, {"d.csv": CSV})
    assert sha256 and keys == {"r1": pytest.approx(0.5)}


def test_predicted_label_outside_the_options_names_the_item(example):
    spec = copy.deepcopy(example.spec)
    index = next(i for i, item in enumerate(spec["items"]) if item["id"] == "pre_a4")
    spec["items"][index]["options"] = [{"id": "no", "text": {"en": "No"}}, {"id": "maybe", "text": {"en": "?"}}]
    with pytest.raises(StudyFileInvalid) as caught:
        target_keys(spec, example.assets)
    [error] = caught.value.errors
    assert error.path == f"items[{index}].key" and "'yes'" in error.message


def test_no_target_gives_no_keys():
    assert target_keys({"target": None, "items": []}, {}) == (None, {}, {})


def test_missing_input_feature_is_an_error(example):
    trained = target_train(example.spec["target"], example.assets)
    with pytest.raises(TargetError, match="income"):
        trained.predict([{"debt_ratio": 0.2}])

"""training/metrics.py against figures worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as M

# 3 classes, 8 samples. Confusion matrix (rows true, columns predicted):
#   [[2, 1, 0],      accuracy = (2 + 2 + 1) / 8 = 0.625
#    [0, 2, 1],      precision = (2/3, 2/3, 1/2), recall = (2/3, 2/3, 1/2)
#    [1, 0, 1]]      F1 = (2/3, 2/3, 1/2), macro-F1 = 11/18
Y_TRUE = [0, 0, 0, 1, 1, 1, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 2, 2, 0]


def test_confusion_matrix_by_hand():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.625)


def test_per_class_scores_and_macro_f1_by_hand():
    s = M.per_class_scores(M.confusion_matrix(Y_TRUE, Y_PRED, 3))
    np.testing.assert_allclose(s["precision"], [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(s["recall"], [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(s["f1"], [2 / 3, 2 / 3, 1 / 2])
    np.testing.assert_array_equal(s["support"], [3, 3, 2])
    assert M.macro_f1(M.confusion_matrix(Y_TRUE, Y_PRED, 3)) == pytest.approx(11 / 18)


def test_asymmetric_precision_recall():
    # Class 0: 4 true, predicted 5 times, 3 right -> precision 3/5, recall 3/4, F1 = 2*(.6*.75)/(1.35) = 2/3.
    y_true = [0, 0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 0, 0, 1]
    s = M.per_class_scores(M.confusion_matrix(y_true, y_pred, 2))
    assert s["precision"][0] == pytest.approx(3 / 5)
    assert s["recall"][0] == pytest.approx(3 / 4)
    assert s["f1"][0] == pytest.approx(2 / 3)
    # Class 1: 3 true, predicted twice, 1 right -> precision 1/2, recall 1/3, F1 = 2/5.
    assert s["f1"][1] == pytest.approx(2 / 5)


def test_class_never_predicted_scores_zero_not_nan():
    cm = M.confusion_matrix([0, 1, 2], [0, 0, 0], 3)
    s = M.per_class_scores(cm)
    np.testing.assert_allclose(s["precision"], [1 / 3, 0, 0])
    np.testing.assert_allclose(s["recall"], [1, 0, 0])
    assert M.macro_f1(cm) == pytest.approx((0.5 + 0 + 0) / 3)


def test_classification_report_is_plain_json():
    r = M.classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(0.625) and r["macro_f1"] == pytest.approx(11 / 18)
    assert r["per_class"]["c"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 1]] and r["n"] == 8


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 3], [0, 1], 3)


def test_mae_and_cumulative_score_by_hand():
    true, pred = [10, 20, 30, 40], [12, 20, 25, 50]  # errors 2, 0, 5, 10
    assert M.mae(true, pred) == pytest.approx(17 / 4)
    assert M.cumulative_score(true, pred, 5) == pytest.approx(3 / 4)  # |error| <= 5 counts
    assert M.cumulative_score(true, pred, 1) == pytest.approx(1 / 4)


def test_age_bands_edges():
    bands = M.age_band([0, 12, 13, 19, 20, 35, 36, 59, 60, 116])
    assert bands.tolist() == ["0-12", "0-12", "13-19", "13-19", "20-35", "20-35", "36-59", "36-59", "60+", "60+"]


def test_grouped_mae_and_accuracy():
    true = np.array([10, 20, 30, 40, 50])
    pred = np.array([11, 22, 30, 44, 50])  # errors 1, 2, 0, 4, 0
    gender = np.array(["male", "female", "male", "female", "male"])
    g = M.grouped(M.mae, true, pred, gender, ["male", "female"])
    assert list(g) == ["male", "female"]
    assert g["male"] == {"value": pytest.approx(1 / 3), "n": 3}
    assert g["female"] == {"value": pytest.approx(3.0), "n": 2}

    acc = M.grouped(M.accuracy, [0, 1, 1, 0], [0, 1, 0, 0], ["a", "a", "b", "b"])
    assert acc == {"a": {"value": 1.0, "n": 2}, "b": {"value": 0.5, "n": 2}}


def test_grouped_keeps_empty_groups():
    g = M.grouped(M.mae, [1, 2], [1, 3], ["x", "x"], ["x", "y"])
    assert g["y"]["n"] == 0 and math.isnan(g["y"]["value"])

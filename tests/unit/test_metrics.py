"""Metrics against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from dist_train.train.metrics import log_loss, normalized_entropy, roc_auc


def _brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # coarse rounding forces ties
    assert roc_auc(y, s) == pytest.approx(_brute_auc(y, s), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_auc_is_nan_for_scores_that_are_not_finite(bad: float) -> None:
    y = np.array([0, 1, 0, 1])
    # argsort puts NaN last: ranked as the highest score, this read a perfect 1.0
    assert np.isnan(roc_auc(y, np.array([0.1, 0.4, 0.35, bad])))


def test_log_loss_and_ne() -> None:
    y = np.array([1, 0, 1, 0])
    assert log_loss(y, np.array([0.5] * 4)) == pytest.approx(np.log(2))
    # Predicting the base rate gives NE = 1.
    y = np.array([1, 0, 0, 0])
    assert normalized_entropy(y, np.full(4, 0.25)) == pytest.approx(1.0)

"""Binary-classification metrics on gathered predictions: AUC, log loss, normalized entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with tied scores counted as half); NaN where a class is
    missing or a score is not finite."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    num_pos = float(y.sum())
    num_neg = float(y.size - num_pos)
    # a diverged model's NaNs sort last and would rank as a plausible AUC
    if num_pos == 0 or num_neg == 0 or not np.isfinite(s).all():
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # Average 1-based ranks over runs of tied scores.
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], s_sorted.size]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty_like(s)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return float((ranks[y == 1].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities ``probs``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Log loss divided by the entropy of the base click rate (below 1 = better than the rate)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    rate = float(np.clip(y.mean(), 1e-7, 1.0 - 1e-7))
    base = -(rate * np.log(rate) + (1.0 - rate) * np.log(1.0 - rate))
    return float(log_loss(y, probs) / base)


class EvalFigures(TypedDict):
    """Test metrics of a run (keys of the summary)."""

    test_auc: float
    test_log_loss: float
    test_ne: float
    test_examples: int


@dataclass(frozen=True)
class EvalMetrics:
    auc: float
    log_loss: float
    ne: float
    num_examples: int

    def as_summary(self) -> EvalFigures:
        return EvalFigures(
            test_auc=self.auc,
            test_log_loss=self.log_loss,
            test_ne=self.ne,
            test_examples=self.num_examples,
        )

    @classmethod
    def of(cls, labels: np.ndarray, probs: np.ndarray) -> EvalMetrics:
        return cls(
            auc=roc_auc(labels, probs),
            log_loss=log_loss(labels, probs),
            ne=normalized_entropy(labels, probs),
            num_examples=int(np.asarray(labels).size),
        )

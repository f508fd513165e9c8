"""Binary-classification metrics on gathered predictions: AUC, log loss, normalized entropy.

They take the model's logits, not its click probabilities: a float32 sigmoid is 1.0 for
every logit above about 17, which tied a confident model's top predictions (lowering its
AUC) and capped their log loss at the clipping epsilon's.
"""

from __future__ import annotations

import math
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


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of the predictions with ``logits`` (the training loss,
    exact at any logit: ``softplus(-z)`` for a click, ``softplus(z)`` for none)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -z, z))))


def normalized_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Log loss divided by the entropy of the base click rate (below 1 = better than the rate):
    the mean of ``labels``, the rows evaluated (TorchRec's NE; He et al. 2014 take the
    training set's rate). NaN where a class is missing, whose rate has no entropy."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    rate = float(y.mean()) if y.size else 0.0
    if not 0.0 < rate < 1.0:
        return float("nan")
    base = -(rate * np.log(rate) + (1.0 - rate) * np.log(1.0 - rate))
    return float(log_loss(y, logits) / base)


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

    def describe(self) -> str:
        """The progress line's words for these metrics."""
        # AUC and NE are undefined over one class (AUC ranks positives over negatives; NE
        # divides by the labels' own entropy, 0 there): nan, said why. NE is nan for that
        # alone where the log loss is finite; a prediction that is not finite makes AUC nan
        # over both classes (±inf logits on their own class's side keep the log loss finite,
        # and were said to be one class)
        one_class = math.isnan(self.ne) and math.isfinite(self.log_loss)
        why = ""
        if one_class:
            why = " (their labels are all one class: AUC and NE undefined)"
        elif math.isnan(self.auc):
            why = " (a prediction is not finite: AUC undefined)"
        return (
            f"test AUC {self.auc:.4f} log loss {self.log_loss:.4f} NE {self.ne:.4f} on "
            f"{self.num_examples:,} examples{why}"
        )

    @classmethod
    def of(cls, labels: np.ndarray, logits: np.ndarray) -> EvalMetrics:
        """The metrics of predictions with ``logits`` against 0/1 ``labels``."""
        return cls(
            auc=roc_auc(labels, logits),
            log_loss=log_loss(labels, logits),
            ne=normalized_entropy(labels, logits),
            num_examples=int(np.asarray(labels).size),
        )

"""Metrics against brute-force definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dist_train.data.synthetic import generate
from dist_train.train.metrics import EvalMetrics, log_loss, normalized_entropy, roc_auc
from dist_train.train.trainer import Trainer
from tests.conftest import small_config


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
    assert log_loss(y, np.zeros(4)) == pytest.approx(np.log(2))
    # Predicting the base rate gives NE = 1.
    y = np.array([1, 0, 0, 0])
    assert normalized_entropy(y, np.full(4, np.log(0.25 / 0.75))) == pytest.approx(1.0)
    # one class: its rate has no entropy, and a clipped one made NE 1e5 or 1e-3 at will
    for labels in (np.zeros(4), np.ones(4), np.zeros(0)):
        assert np.isnan(normalized_entropy(labels, np.full(labels.size, -2.0)))


def test_metrics_of_one_class_say_why_auc_is_nan() -> None:
    """3 test rows all labelled 1 printed a bare `test AUC nan ... NE nan` (a walk-through
    of awkward data)."""
    one = EvalMetrics.of(np.ones(3), np.array([0.1, 0.5, -1.0])).describe()
    assert one.endswith("on 3 examples (their labels are all one class: AUC and NE undefined)")
    both = EvalMetrics.of(np.array([0, 1, 1]), np.array([0.1, 0.5, -1.0])).describe()
    assert "one class" not in both
    with np.errstate(invalid="ignore"):  # the NaN is the point
        nan = EvalMetrics.of(np.array([0, 1, 1]), np.array([0.1, np.nan, -1.0])).describe()
    assert "test AUC nan" in nan and "one class" not in nan  # a NaN prediction, not the labels
    assert nan.endswith("(a prediction is not finite: AUC undefined)")
    # infinite logits on their own class's side: a finite log loss, two classes all the same
    inf = EvalMetrics.of(np.array([0, 1, 1]), np.array([-np.inf, np.inf, 2.0])).describe()
    assert "one class" not in inf and inf.endswith("(a prediction is not finite: AUC undefined)")


def test_log_loss_is_the_training_loss_at_any_logit() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    z = np.array([3.0, -40.0, -60.0, 50.0, 0.25], dtype=np.float32)
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(z).double(), torch.from_numpy(y)
    )
    # probabilities clipped at 1e-7 capped the two confident mistakes at about 16 each
    assert log_loss(y, z) == pytest.approx(float(want), rel=1e-12)
    assert log_loss(y, z) > 20


@pytest.mark.usefixtures("one_rank")
def test_evaluation_ranks_a_confident_models_predictions_by_their_logits(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    trainer = Trainer.build(cfg)
    test_dir = generate(cfg.data.synthetic, tmp_path / "data", progress=False).test_dir
    builder = trainer.batch_builder()
    batch = builder.build(pq.read_table(test_dir, columns=builder.columns).slice(0, 512))
    logits = trainer.logits(batch).astype(np.float64)
    labels = batch.labels.numpy()
    # the same model, a thousand times as confident: its predictions keep their order,
    # though most of their float32 sigmoids are exactly 0 or 1
    trainer.model.register_forward_hook(lambda module, args, out: out * 1000)
    confident = trainer.evaluate([(batch, 512)])
    assert confident.auc == pytest.approx(roc_auc(labels, logits), abs=1e-12)
    assert confident.log_loss == pytest.approx(log_loss(labels, logits * 1000), rel=1e-6)


@pytest.mark.usefixtures("one_rank")
def test_evaluation_counts_a_padded_batchs_real_rows_alone(tmp_path: Path) -> None:
    """The last batch of a rank's test rows is padded by repeating them, and a rank out of
    rows steps on a filler batch of 0 valid rows: neither padding counts."""
    cfg = small_config(tmp_path)
    trainer = Trainer.build(cfg)
    test_dir = generate(cfg.data.synthetic, tmp_path / "data", progress=False).test_dir
    builder = trainer.batch_builder()
    table = pq.read_table(test_dir, columns=builder.columns)
    real = table.slice(0, 300)
    # the rows after the first 300 are not to count, whatever they hold (`padded` repeats
    # the real ones; other rows here, so that counting any but the first 300 shows)
    padded_batch = builder.build(pa.concat_tables([real, table.slice(2000, 212)]))
    filler = builder.build(table.slice(1000, 512))
    got = trainer.evaluate([(padded_batch, 300), (filler, 0)])
    alone = builder.build(real)
    want = EvalMetrics.of(alone.labels.numpy(), trainer.logits(alone).astype(np.float64))
    assert (got.auc, got.log_loss, got.ne) == pytest.approx((want.auc, want.log_loss, want.ne))
    # the same rows counted once each: AUC and log loss of 512 rows would differ
    everything = trainer.evaluate([(padded_batch, 512)])
    assert everything.log_loss != pytest.approx(want.log_loss, rel=1e-9)

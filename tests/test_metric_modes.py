"""Metric directions for the names Keras, Lightning (torchmetrics) and scikit-learn log."""

from __future__ import annotations

import pytest

from recordkit import metric_modes
from recordkit.metric_modes import metric_direction, metric_mode

HIGHER = [
    # Keras 3 metric names as logged, with their val_ twins and a duplicate's suffix
    "accuracy", "val_accuracy", "binary_accuracy", "categorical_accuracy",
    "sparse_categorical_accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy", "auc", "val_auc_1", "precision", "recall_1",
    "f1_score", "fbeta_score", "mean_io_u", "val_mean_io_u", "io_u", "one_hot_io_u",
    "r2_score", "cosine_similarity", "precision_at_recall", "specificity_at_sensitivity",
    # Lightning / torchmetrics names, with Lightning's _epoch and / prefixes
    "val_acc", "val/acc", "train_acc_epoch", "val/f1", "val/auroc", "BinaryAUROC",
    "MulticlassJaccardIndex", "val/iou", "val/miou", "val/dice", "val/map", "val/map_50",
    "val/bleu", "rouge1_fmeasure", "psnr", "ssim", "val/MatthewsCorrCoef", "cohen_kappa",
    "ndcg@10", "hit_rate", "episode_reward", "mean_return", "valAccuracy", "topk/top5",
]
LOWER = [
    "loss", "val_loss", "train/loss", "train_loss_epoch", "val/loss_step", "mse",
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "root_mean_squared_error", "val_rmse", "perplexity", "val/ppl", "wer", "cer",
    "kl_divergence", "hinge", "squared_hinge", "logcosh", "poisson", "binary_crossentropy",
    "categorical_crossentropy", "top1_error", "val/nll", "fid", "accuracy_loss",
    "reconstruction_loss", "unknown_metric",
]
NEITHER = [
    "lr", "lr-SGD", "lr-Adam", "lr-Adam/pg1", "lr-SGD-1", "learning_rate", "epoch_time",
    "time/epoch", "step_time", "samples_per_second", "throughput", "grad_norm",
    "momentum", "epoch", "global_step", "gpu_memory", "batch_size",
]


@pytest.mark.parametrize("name", HIGHER)
def test_higher_is_better(name: str) -> None:
    assert metric_direction(name) == "max" and metric_mode(name) == "max"


@pytest.mark.parametrize("name", LOWER)
def test_lower_is_better(name: str) -> None:
    assert metric_direction(name) == "min" and metric_mode(name) == "min"


@pytest.mark.parametrize("name", NEITHER)
def test_no_best(name: str) -> None:
    assert metric_direction(name) is None and metric_mode(name) == "min"


def test_a_direction_can_be_set_per_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metric_direction("score") == "max"
    assert metric_direction("score", {"score": "min"}) == "min"
    monkeypatch.setitem(metric_modes.METRIC_MODES, "loss", None)
    assert metric_direction("loss") is None
    assert metric_direction("loss", {"loss": "min"}) == "min"  # modes= wins over the table

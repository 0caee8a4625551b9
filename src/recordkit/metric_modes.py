"""Which way a metric is better: higher (accuracy, AUC, F1, IoU...), lower (losses,
errors, perplexity...), or neither (learning rates, epoch times, step counters), for the
names Keras, Lightning, torchmetrics and scikit-learn log. A name is read word by word
(``val/mean_io_u`` is the words val, mean, io, u; ``valAccuracy`` is val, accuracy).

Example:
    >>> [metric_direction(n) for n in ("val/mean_io_u", "val_loss", "lr-Adam", "epoch_time")]
    ['max', 'min', None, None]
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["METRIC_MODES", "metric_direction", "metric_mode"]

#: Directions by exact metric name that win over the rules below; a user may add to it
#: (``recordkit.metric_modes.METRIC_MODES["score"] = "min"``) or pass ``modes=`` where a
#: function takes it. A value of None means the metric has no best.
METRIC_MODES: dict[str, str | None] = {}

# Words of names that are not a quality of the model: no best value.
_NEITHER = re.compile(
    r"^(lr|lrs|learning_rate|learning|momentum|beta\d?|weight_decay|wd|time|times|duration"
    r"|seconds|secs|sec|ms|throughput|samples_per_sec(ond)?|it|its|per|epoch|epochs|step"
    r"|steps|global_step|batch|batches|batch_size|grad_norm|gradient_norm|norm|memory|mem"
    r"|gpu|cpu|temperature|scale|loss_scale)$")
# Words that say lower is better.
_LOWER = re.compile(
    r"^(loss|losses|error|errors|err|mse|mae|rmse|msle|rmsle|mape|smape|nll|perplexity|ppl"
    r"|cer|wer|ter|fpr|fnr|far|frr|eer|kl|kld|divergence|distance|hinge|crossentropy"
    r"|logcosh|huber|poisson|regret|cost|risk|fid|lpips|bpd|bpc|hamming)$")
# Words that say higher is better.
_HIGHER = re.compile(
    r"^(acc|accuracy|accuracies|auc|auroc|auprc|roc|f1|f2|fbeta|f1score|precision|recall"
    r"|iou|miou|jaccard|dice|map|ap|bleu|rouge\w*|meteor|chrf|cider|r2|explained_variance"
    r"|top\d*|hit|hits|ndcg|mrr|psnr|ssim|kappa|mcc|matthews|specificity|sensitivity"
    r"|tpr|tnr|reward|rewards|return|returns|score|likelihood|elbo|spearman|pearson"
    r"|correlation|corr|coverage|success|win|agreement|similarity)$")
# "io_u" is how Keras spells IoU in a snake-case name (MeanIoU -> mean_io_u).
_IOU = re.compile(r"(^|_)io_u($|_)")


def words(name: str) -> list[str]:
    """The lower-case words of a metric name: split at non-letters and camel case."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def metric_direction(name: str, modes: Mapping[str, str | None] | None = None) -> str | None:
    """``"max"`` when higher values of *name* are better, ``"min"`` when lower ones are,
    None when the metric has no best (a learning rate, a time, a counter). *modes*, then
    :data:`METRIC_MODES`, give a name's direction outright; an unknown name is ``"min"``.
    A word of loss or error decides over one of quality (``accuracy_loss`` is a loss)."""
    for table in (modes or {}, METRIC_MODES):
        if name in table:
            return table[name]
    found = words(name)
    if any(_LOWER.match(w) for w in found):
        return "min"
    if _IOU.search("_".join(found)) or any(_HIGHER.match(w) for w in found):
        return "max"
    if any(_NEITHER.match(w) for w in found):
        return None
    return "min"


def metric_mode(name: str, modes: Mapping[str, str | None] | None = None) -> str:
    """``"max"`` for metrics that grow when better (accuracy, auc, f1, ...), else ``"min"``
    (:func:`metric_direction`, with no-best metrics as ``"min"``).

    Example:
        >>> metric_mode("val/accuracy"), metric_mode("val_loss")
        ('max', 'min')
    """
    return metric_direction(name, modes) or "min"

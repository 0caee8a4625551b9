"""weights.restore into torch modules: after a real Trainer.fit, the model rewound to each
snapshot epoch gives exactly the logits and accuracy the live model had then (float32 and
bfloat16, parameters and BatchNorm buffers); errors on tensors that do not match."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support import require

torch = require("torch", "lightning")
try:
    import lightning.pytorch as lp
except ImportError:
    lp = require("pytorch_lightning", "lightning")

import recordkit as rk  # noqa: E402
from recordkit import weights  # noqa: E402
from recordkit.integrations.lightning import RecordCallback  # noqa: E402
from recordkit.weights import WeightsError  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec")]

GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(64, 6, generator=GENERATOR)
Y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()  # three classes


class Classifier(lp.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                       torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def forward(self, x: Any) -> Any:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def evaluate(module: Any) -> tuple[Any, float]:
    """Logits and accuracy on X in eval mode (BatchNorm from its running statistics)."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        logits = module(X.to(next(module.parameters()).dtype))
    module.train(was_training)
    return logits.float(), float((logits.argmax(1) == Y).float().mean())


class LiveAccuracy(lp.Callback):
    """What the live model gave at the end of each epoch (the snapshot's moment)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[Any, float]] = {}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen[trainer.current_epoch] = evaluate(pl_module)


def fit(tmp_path: Any, precision: str, **options: Any) -> tuple[Any, LiveAccuracy, Any]:
    torch.manual_seed(0)
    model = Classifier()
    live = LiveAccuracy()
    record_cb = RecordCallback(tmp_path, experiment="w", system=False, **options)
    trainer = lp.Trainer(max_epochs=5, callbacks=[live, record_cb], logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, precision=precision,
                         accelerator="cpu", num_sanity_val_steps=0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16)
    trainer.fit(model, data)
    return model, live, rk.load(record_cb.record_path)


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_restored_snapshots_give_the_live_accuracy_of_their_epoch(tmp_path, precision):
    model, live, record = fit(tmp_path, precision, snapshot_every=2)
    assert record.snapshot_epochs == [1, 3, 4]
    accuracies = {e: live.seen[e][1] for e in record.snapshot_epochs}
    assert len(set(accuracies.values())) > 1  # the epochs differ: a wrong epoch would show
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    for epoch in record.snapshot_epochs:
        fresh = Classifier().to(dtype)
        assert weights.restore(fresh, record, epoch) is fresh
        logits, accuracy = evaluate(fresh)
        assert accuracy == accuracies[epoch]
        assert torch.equal(logits, live.seen[epoch][0])
        # the exact inverse: every parameter and buffer bit for bit, dtype kept
        stored = record.weights(epoch)
        for name, tensor in fresh.state_dict().items():
            assert tensor.dtype == (dtype if tensor.is_floating_point() else torch.int64)
            if tensor.dtype == torch.bfloat16:
                assert stored[name].dtype.name == "bfloat16"
                bits = tensor.view(torch.int16).numpy().view(np.uint16)
                np.testing.assert_array_equal(bits, stored[name].view(np.uint16))
            else:
                np.testing.assert_array_equal(tensor.numpy(), stored[name])
    # rewinding the trained model itself: back to epoch 1, then to the end again
    weights.restore(model, record, 1)
    assert torch.equal(evaluate(model)[0], live.seen[1][0])
    weights.restore(model, record)
    assert torch.equal(evaluate(model)[0], live.seen[4][0])


def test_a_bfloat16_snapshot_restores_into_a_float32_module_exactly(tmp_path):
    _, _, record = fit(tmp_path, "bf16-true", snapshot_every=None)
    fresh = weights.restore(Classifier(), record)
    stored = record.weights()["net.0.weight"]
    assert fresh.net[0].weight.dtype == torch.float32
    np.testing.assert_array_equal(fresh.net[0].weight.detach().numpy(),
                                  stored.astype(np.float32))


@pytest.fixture
def record(tmp_path):
    torch.manual_seed(1)
    with rk.Recorder(tmp_path, system=False) as rec:
        rec.snapshot(Classifier(), epoch=0)
    return rk.load(rec.path)


def test_tensors_that_do_not_match_are_refused_naming_them(record):
    class Wider(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.net[3] = torch.nn.Linear(8, 4)

    with pytest.raises(WeightsError, match=r"'net.3.weight'.*\[3, 8\].*\[4, 8\]") as caught:
        weights.restore(Wider(), record, 0)
    assert str(record.path) in str(caught.value)

    class Extra(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, 1)

    with pytest.raises(WeightsError, match=r"no tensor 'head.weight'.*strict=False"):
        weights.restore(Extra(), record, 0)
    extra = Extra()
    head = extra.head.weight.detach().clone()
    weights.restore(extra, record, 0, strict=False)
    assert torch.equal(extra.head.weight, head)  # kept
    np.testing.assert_array_equal(extra.net[0].weight.detach().numpy(),
                                  record.weights(0)["net.0.weight"])
    fewer = torch.nn.Module()
    fewer.net = torch.nn.Sequential(torch.nn.Linear(6, 8))
    with pytest.raises(WeightsError, match=r"holds tensor 'net.1.bias'.*the model has not"):
        weights.restore(fewer, record, 0)
    with pytest.raises(WeightsError, match=r"no snapshot at epoch 3 to restore.*\[0\]"):
        weights.restore(Classifier(), record, 3)


def test_compiled_module_names_and_tied_weights(record, tmp_path):
    compiled = torch.compile(Classifier())
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    weights.restore(compiled, record, 0)
    np.testing.assert_array_equal(compiled.state_dict()["_orig_mod.net.3.bias"].numpy(),
                                  record.weights(0)["net.3.bias"])
    # a record of a compiled module restores into the plain one
    with rk.Recorder(tmp_path / "compiled", system=False) as rec:
        rec.snapshot(compiled.state_dict(), epoch=0)
    plain = weights.restore(Classifier(), rk.load(rec.path), 0)
    assert torch.equal(plain.net[0].weight, compiled.net[0].weight)

    def tied() -> Any:
        module = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
        module[1].weight = module[0].weight
        return module

    torch.manual_seed(2)
    source = tied()
    with rk.Recorder(tmp_path / "tied", system=False) as rec:
        rec.snapshot(source, epoch=0)
    target = weights.restore(tied(), rk.load(rec.path), 0)
    assert target[1].weight is target[0].weight  # still one tensor
    assert torch.equal(target[0].weight, source[0].weight)


def test_an_interpolated_state_dict_restores_between_the_ends(tmp_path):
    _, live, record = fit(tmp_path, "32-true")
    (_, start), (_, end) = weights.interpolate(record, 0, 4, [0.0, 1.0])
    model = Classifier()
    assert torch.equal(evaluate(weights.restore(model, start))[0], live.seen[0][0])
    assert torch.equal(evaluate(weights.restore(model, end))[0], live.seen[4][0])
    (_, middle), = weights.interpolate(record, 0, 4, [0.5])
    weights.restore(model, middle)
    expected = (record.weights(0)["net.0.weight"].astype(np.float64)
                + record.weights(4)["net.0.weight"]) / 2
    np.testing.assert_array_equal(model.net[0].weight.detach().numpy(),
                                  expected.astype(np.float32))


def test_a_tied_tensor_counts_once_in_distances_and_the_trajectory(tmp_path):
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Embedding(6, 4), torch.nn.Linear(4, 6))
    module[1].weight = module[0].weight  # the output layer shares the embedding
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    tokens = torch.arange(6)
    unique = []
    with rk.Recorder(tmp_path, system=False) as rec:
        for epoch in range(4):
            loss = torch.nn.functional.cross_entropy(module(tokens), tokens)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.snapshot(module, epoch=epoch)
            unique.append(np.concatenate([p.detach().numpy().astype(np.float64).ravel()
                                          for p in module.parameters()]))  # tied: once
    record = rk.load(rec.path)
    assert record.tensor_aliases  # the record knows the two names are one tensor
    assert set(record.tensor_names) == set(module.state_dict())
    require("pandas", "analysis")
    frame = weights.distance(record, per="model")
    assert frame["model"].tolist() == pytest.approx(
        [np.linalg.norm(u - unique[0]) for u in unique], rel=1e-6)
    per_tensor = weights.distance(record, per="tensor")
    assert len(per_tensor.columns) == len(list(module.parameters()))
    path = weights.trajectory(record, k=1)
    assert len(path.tensors) == len(list(module.parameters()))
    stacked = np.stack(unique)
    centred = stacked - stacked.mean(axis=0)
    assert path.explained_variance[0] == pytest.approx(
        np.linalg.svd(centred, compute_uv=False)[0] ** 2 / 3, rel=1e-6)

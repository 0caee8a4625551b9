"""Tied tensors are stored once and given back under every name; compiled modules keep the
names of the uncompiled ones (issue 15 item 7)."""

from __future__ import annotations

import json
import pathlib

import h5py
import numpy as np
import pytest

import recordkit as rk
from recordkit.errors import RecordDamagedError, SnapshotError
from recordkit.tensors import to_arrays, uncompiled_name


def _weights_group(path: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    """The tensors stored, and the aliases their datasets name, read with plain h5py."""
    with h5py.File(path, "r") as f:
        aliases = {alias: key for key, ds in f["weights"].items()
                   for alias in json.loads(ds.attrs.get("aliases", "[]"))}
        return sorted(f["weights"]), aliases


def test_one_array_under_two_names_is_stored_once_and_read_back_under_both(
        tmp_path: pathlib.Path) -> None:
    shared = np.arange(12, dtype=np.float32).reshape(3, 4)
    rec = rk.Recorder(tmp_path, system=False)
    for epoch in range(3):
        shared += 1
        rec.snapshot({"embed.weight": shared, "head.weight": shared,
                      "head.bias": np.full(3, epoch, np.float32)}, epoch=epoch)
    path = rec.path
    rec.save()
    stored, aliases = _weights_group(path)
    assert stored == ["embed.weight", "head.bias"]  # the tied tensor once
    assert aliases == {"head.weight": "embed.weight"}
    r = rk.load(path)
    assert r.tensor_names == ["embed.weight", "head.bias", "head.weight"]
    assert r.tensor_aliases == {"head.weight": "embed.weight"}
    for epoch in range(3):
        w = r.weights(epoch)
        expected = np.arange(12, dtype=np.float32).reshape(3, 4) + epoch + 1
        np.testing.assert_array_equal(w["embed.weight"], expected)
        assert w["head.weight"] is w["embed.weight"]  # one array, as the state_dict had
        np.testing.assert_array_equal(r.weight("head.weight")[epoch], expected)
    history = r.weight("head.weight")
    assert history.name == "head.weight" and history.epochs.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(history[:], r.weight("embed.weight")[:])


def test_equal_but_separate_arrays_are_two_tensors(tmp_path: pathlib.Path) -> None:
    a = np.ones(4, np.float32)
    rec = rk.Recorder(tmp_path, system=False)
    rec.snapshot({"a": a, "b": a.copy(), "view": a[:2], "empty1": np.zeros(0),
                  "empty2": np.zeros(0)}, epoch=0)
    path = rec.path
    rec.save()
    stored, aliases = _weights_group(path)
    assert stored == ["a", "b", "empty1", "empty2", "view"] and aliases == {}
    assert rk.load(path).tensor_aliases == {}


def test_a_tied_tensor_that_comes_untied_is_refused_in_the_call(tmp_path: pathlib.Path
                                                                  ) -> None:
    shared = np.ones(4, np.float32)
    rec = rk.Recorder(tmp_path, system=False, background=False)
    rec.snapshot({"a": shared, "b": shared}, epoch=0)
    with pytest.raises(SnapshotError, match=r"'b' was tied to 'a'.*not now"):
        rec.snapshot({"a": shared, "b": shared.copy()}, epoch=1)
    rec.snapshot({"a": shared, "b": shared}, epoch=1)  # the run goes on
    path = rec.path
    rec.save()
    assert rk.load(path).snapshot_epochs == [0, 1]


def test_aliases_survive_a_resume_and_damage_to_them_is_an_error(tmp_path: pathlib.Path
                                                                 ) -> None:
    shared = np.ones(4, np.float32)
    rec = rk.Recorder(tmp_path, system=False)
    rec.snapshot({"a": shared, "b": shared}, epoch=0)
    path = rec.path
    rec.save()
    again = rk.Recorder(tmp_path, resume=path, system=False)
    shared *= 2
    again.snapshot({"a": shared, "b": shared}, epoch=1)
    again.save()
    r = rk.load(path)
    assert r.tensor_aliases == {"b": "a"}
    assert r.weight("b")[1].tolist() == [2.0] * 4
    with h5py.File(path, "r+") as f:
        f["weights/a"].attrs["aliases"] = json.dumps(["b", "c"])  # its CRC not updated
    with pytest.raises(RecordDamagedError, match="aliases.*CRC32C"):
        rk.load(path).weights(0)


def test_compiled_names_are_the_uncompiled_ones() -> None:
    assert uncompiled_name("_orig_mod.fc.weight") == "fc.weight"
    assert uncompiled_name("net._orig_mod.0._orig_mod.bias") == "net.0.bias"
    assert uncompiled_name("my_orig_mod.x") == "my_orig_mod.x"
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    plain = to_arrays(model, copy=False)
    compiled = torch.compile(model, backend="eager")
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert list(to_arrays(compiled, copy=False)) == list(plain)
    outer = torch.nn.Module()
    outer.net = torch.compile(torch.nn.Linear(3, 2), backend="eager")
    assert list(to_arrays(outer.state_dict(), copy=False)) == ["net.weight", "net.bias"]


class _TiedLM:
    """A tiny language model whose output layer shares the embedding's weight."""

    @staticmethod
    def build(torch):
        class TiedLM(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding(11, 8)
                self.body = torch.nn.Linear(8, 8)
                self.head = torch.nn.Linear(8, 11, bias=False)
                self.head.weight = self.embed.weight  # tied

            def forward(self, x):
                return self.head(torch.tanh(self.body(self.embed(x))))
        return TiedLM


def test_a_torch_module_with_tied_weights_round_trips_through_load_state_dict(
        tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = _TiedLM.build(torch)()
    assert len(model.state_dict()) == 4  # embed.weight and head.weight are one tensor
    rec = rk.Recorder(tmp_path, system=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randint(0, 11, (16,))
    for epoch in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.snapshot(model, epoch=epoch)
    path = rec.path
    rec.save()
    stored, aliases = _weights_group(path)
    assert stored == ["body.bias", "body.weight", "embed.weight"]
    assert aliases == {"head.weight": "embed.weight"}
    r = rk.load(path)
    fresh = _TiedLM.build(torch)()
    fresh.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in r.weights(1).items()})
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.head.weight is fresh.embed.weight


def test_lightning_records_a_compiled_tied_model_under_the_uncompiled_names(
        tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from recordkit.integrations.lightning import RecordCallback

    TiedLM = _TiedLM.build(torch)

    class Module(pl.LightningModule):
        def __init__(self, compiled: bool) -> None:
            super().__init__()
            lm = TiedLM()
            self.lm = torch.compile(lm, backend="eager") if compiled else lm

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = torch.nn.functional.cross_entropy(self.lm(x), x)
            self.log("loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randint(0, 11, (32,))), batch_size=8)
    names = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        module = Module(compiled)
        callback = RecordCallback(tmp_path, experiment=f"compiled-{compiled}")
        trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, data)
        r = rk.load(callback.record_path)
        names[compiled] = r.tensor_names
        assert r.tensor_aliases == {"lm.head.weight": "lm.embed.weight"}
        last = r.weights(1)
        live = {uncompiled_name(k): v for k, v in module.state_dict().items()}
        assert sorted(last) == sorted(live)
        for key, value in live.items():
            np.testing.assert_array_equal(last[key], value.numpy(), err_msg=key)
    assert names[True] == names[False]


def test_a_subclassed_keras_model_is_snapshotted_by_variable_path(tmp_path: pathlib.Path
                                                                  ) -> None:
    keras = pytest.importorskip("keras")

    class Small(keras.Model):  # defined here, not in keras: found by its base class
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2, name="dense")

        def call(self, x):
            return self.dense(x)

    model = Small()
    model(np.zeros((1, 3), np.float32))
    rec = rk.Recorder(tmp_path, system=False)
    rec.snapshot(model, epoch=0)
    path = rec.path
    rec.save()
    stored = rk.load(path).weights(0)
    assert sorted(stored) == sorted(v.path for v in model.weights)
    for variable in model.weights:
        np.testing.assert_array_equal(stored[variable.path], variable.numpy())


def test_a_name_tied_later_to_a_stored_tensor_is_a_tensor_of_its_own(tmp_path: pathlib.Path
                                                                     ) -> None:
    shared = np.zeros(3, np.float32)
    rec = rk.Recorder(tmp_path, system=False)
    rec.snapshot({"a": shared}, epoch=0)
    shared += 1
    rec.snapshot({"a": shared, "late": shared}, epoch=1)  # "late" has no epoch 0
    path = rec.path
    rec.save()
    r = rk.load(path)
    assert r.tensor_aliases == {} and _weights_group(path)[0] == ["a", "late"]
    assert r.weight("late").epochs.tolist() == [1]
    assert r.weight("a").epochs.tolist() == [0, 1]

"""SnapshotPolicy: which epochs, which tensors, which storage dtype."""

from __future__ import annotations

import numpy as np
import pytest

from recordkit import Recorder, load
from recordkit.dtypes import cast_for_storage
from recordkit.errors import SnapshotError
from recordkit.policy import SnapshotPolicy


@pytest.mark.parametrize(("every", "expected"), [
    (1, [0, 1, 2, 3, 4, 5, 6]),
    (3, [2, 5, 6]),
    (None, [6]),
    ("validation", [6]),  # at epoch ends only the last; each validation asks at_validation
])
def test_due_epochs_include_the_last(every, expected):
    policy = SnapshotPolicy(every)
    assert [e for e in range(7) if policy.due(e, {}, last=e == 6)] == expected
    assert policy.at_validation is (every == "validation")
    if every != "validation":  # one snapshot per validation: as many as epochs, at least
        assert policy.planned_snapshots(7) == len(expected)


def test_validation_plans_a_snapshot_per_epoch():
    assert SnapshotPolicy("validation").planned_snapshots(7) == 7
    assert SnapshotPolicy("validation").planned_snapshots(0) == 0


def test_best_keeps_improvements_and_last_and_resumes():
    policy = SnapshotPolicy("best", monitor="acc", mode="max")
    values = [0.5, 0.7, 0.6, float("nan"), 0.8, 0.75]
    due = [policy.due(e, {"acc": v}, last=e == 5) for e, v in enumerate(values)]
    assert due == [True, True, False, False, True, True]
    resumed = SnapshotPolicy("best", monitor="acc", mode="max")
    resumed.load_state_dict(policy.state_dict())
    assert not resumed.due(6, {"acc": 0.79})
    assert resumed.due(7, {"acc": 0.81})
    assert policy.planned_snapshots(10) == 10  # worst case: every epoch improves


@pytest.mark.parametrize(("kwargs", "frozen", "expected"), [
    ({}, (), ["enc.weight", "enc.bias", "head.weight", "head.bias", "bn.num_batches"]),
    ({"include": "head.*"}, (), ["head.weight", "head.bias"]),
    ({"exclude": ["*.bias", "bn.*"]}, (), ["enc.weight", "head.weight"]),
    ({"include": ["*.weight", "*.bias"], "exclude": "enc.*"}, (),
     ["head.weight", "head.bias"]),
    ({}, {"enc.weight", "enc.bias"}, ["head.weight", "head.bias", "bn.num_batches"]),
    ({"exclude": "bn.*"}, {"enc.weight"}, ["enc.bias", "head.weight", "head.bias"]),
])
def test_select(kwargs, frozen, expected):
    names = ["enc.weight", "enc.bias", "head.weight", "head.bias", "bn.num_batches"]
    assert SnapshotPolicy(**kwargs).select(names, frozen) == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every": 0}, "must be a positive int"),
    ({"every": "validations"}, r"None \(last epoch only\), 'best' or 'validation'"),
    ({"every": "best"}, "needs monitor"),
    ({"mode": "up"}, "must be 'min' or 'max'"),
    ({"dtype": "int8"}, "must be one of"),
])
def test_bad_arguments_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SnapshotPolicy(**kwargs)


def test_bad_pattern_type():
    with pytest.raises(TypeError, match="glob pattern"):
        SnapshotPolicy(include=[1, 2])


def test_bfloat16_cast_matches_ml_dtypes_rounding():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(10_000).astype(np.float32) * 1e3,
        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 1.0 + 2**-8,
                  1.0 + 3 * 2**-8], dtype=np.float32),
    ])
    bits = np.asarray(cast_for_storage(values, "bfloat16")).view(np.uint16)
    expected = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(bits, expected)
    nan_bits = np.asarray(cast_for_storage(np.array([np.nan], np.float32), "bfloat16"))
    assert np.isnan((nan_bits.astype(np.uint32) << 16).view(np.float32)).all()


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("dtype", ["keep", "float16", "bfloat16"])
def test_recorder_applies_policy(tmp_path, dtype, background):
    rng = np.random.default_rng(1)
    weights = {
        "enc.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "enc.bias": rng.standard_normal(4),
        "head.weight": rng.standard_normal((4, 2)).astype(np.float32),
        "head.bias": rng.standard_normal(2).astype(np.float32),
        "bn.num_batches": np.array(7, dtype=np.int64),
    }
    policy = SnapshotPolicy(exclude="*.bias", dtype=dtype)
    with Recorder(tmp_path, system=False, background=background) as rec:
        rec.snapshot(weights, epoch=0, policy=policy, frozen={"enc.weight"})
    r = load(rec.path)
    assert sorted(r.tensor_names) == ["bn.num_batches", "head.weight"]
    stored = r.weights(0)
    assert stored["bn.num_batches"].dtype == np.int64  # integers keep their dtype
    assert int(stored["bn.num_batches"]) == 7
    head = weights["head.weight"]
    if dtype == "keep":
        np.testing.assert_array_equal(stored["head.weight"], head)
    elif dtype == "float16":
        assert stored["head.weight"].dtype == np.float16
        np.testing.assert_array_equal(stored["head.weight"], head.astype(np.float16))
    else:
        assert r.weight("head.weight").dtype_name == "bfloat16"
        as_f32 = np.asarray(stored["head.weight"], dtype=np.float32)
        np.testing.assert_allclose(as_f32, head, rtol=2**-8)
        # exact representation: the stored bits are the rounded top halves
        expected_bits = cast_for_storage(head, "bfloat16").view(np.uint16)
        np.testing.assert_array_equal(as_f32.view(np.uint32) >> 16, expected_bits)


def test_changing_the_selection_between_snapshots_is_an_error(tmp_path):
    rec = Recorder(tmp_path, system=False, background=False)
    weights = {"a": np.ones(2), "b": np.ones(2)}
    rec.snapshot(weights, epoch=0)
    with pytest.raises(SnapshotError, match="'b'.*is missing.*include/exclude/frozen"):
        rec.snapshot(weights, epoch=1, frozen={"b"})
    rec.close()


def test_tensor_names_are_those_earlier_snapshots_hold_also_after_resume(tmp_path):
    rec = Recorder(tmp_path, system=False)
    assert rec.tensor_names == []
    rec.snapshot({"a": np.ones(2), "frozen": np.zeros(3)}, epoch=0, frozen={"frozen"})
    assert rec.tensor_names == ["a"]  # known at once, while the writer may still write
    rec.close("interrupted")
    again = Recorder(tmp_path, resume=rec.path, system=False)
    assert again.tensor_names == ["a"]
    again.snapshot({"a": np.full(2, 5.0), "b": np.ones(1)}, epoch=1)
    assert sorted(again.tensor_names) == ["a", "b"]
    again.save()
    assert load(rec.path).weight("a")[:].tolist() == [[1.0, 1.0], [5.0, 5.0]]


def test_torch_bfloat16_stored_as_float16(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.tensor([1.0, -2.5, 0.15625], dtype=torch.bfloat16)
    with Recorder(tmp_path, system=False) as rec:
        rec.snapshot({"w": t}, epoch=0, policy=SnapshotPolicy(dtype="float16"))
    stored = load(rec.path).weights(0)["w"]
    assert stored.dtype == np.float16
    assert stored.tolist() == t.float().tolist()

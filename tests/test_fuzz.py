"""Fuzzing: params, metric names and values round-trip through a real file (hypothesis);
random mutations of a valid record read either as a record or as a RecordkitError.

Budget: ~15 s (40 hypothesis examples, each a real file; 80 mutants read in one child
process that is restarted after any crash).
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recordkit
from tests.test_damaged import make_record, read_in_children

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
#: numpy float scalars, NaN and ±inf included (np.float64's numpy 2 repr once broke loading).
NUMPY_FLOATS = st.builds(lambda cls, v: cls(v), st.sampled_from([np.float64, np.float32]),
                         st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5]))
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False) | NUMPY_FLOATS | TEXT)
PARAMS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=10)
VALUES = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1,
                  max_size=5)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=st.dictionaries(TEXT, PARAMS, max_size=4),
       metrics=st.dictionaries(TEXT, VALUES, min_size=1, max_size=3))
def test_params_metric_names_and_values_round_trip(params: dict, metrics: dict) -> None:
    with tempfile.TemporaryDirectory() as root:
        with recordkit.Recorder(root, params=params, system=False, mask_secrets=False) as rec:
            for name, values in metrics.items():
                for epoch, value in enumerate(values):
                    rec.log({name: value}, epoch=epoch)
            rec.commit()
        record = recordkit.load(rec.path)
        assert same(record.params, params), (record.params, params)
        assert not record.unserialisable_params
        assert sorted(record.history) == sorted(metrics)
        for name, values in metrics.items():
            np.testing.assert_array_equal(record.history[name], np.array(values))
            assert record.history.epochs(name).tolist() == list(range(len(values)))
        assert record.params_hash == recordkit.load(rec.path).params_hash


def same(a: object, b: object) -> bool:
    """*a* (read back) equals *b* (given), NaN equal to NaN, numpy scalars of their dtype
    (np.float64 reads back as the float it subclasses)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(b, np.floating) and not isinstance(b, float) and not (
            isinstance(a, np.floating) and a.dtype == b.dtype):
        return False
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)) and (
            math.isnan(a) and math.isnan(b)):
        return True
    return bool(a == b)


@given(value=st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=30, deadline=None)
def test_float_params_keep_nan_and_inf(value: float) -> None:
    from recordkit import codec

    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes ±inf
        narrow = np.float32(value)
    for given_value in (value, np.float64(value), narrow):
        doc, flagged = codec.encode_params({"x": given_value})
        back = codec.decode_params(doc)["x"]
        assert not flagged
        assert (math.isnan(back) and math.isnan(given_value)) or back == given_value


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        at = rng.randrange(len(out))
        if kind < 0.5:
            out[at] ^= 1 << rng.randrange(8)
        elif kind < 0.8:
            out[at] = rng.randrange(256)
        elif kind < 0.9:
            length = rng.randint(1, 64)
            out[at:at + length] = bytes(min(length, len(out) - at))
        else:
            length = rng.randint(1, 16)
            out[at:at + length] = rng.randbytes(min(length, len(out) - at))
    if rng.random() < 0.1:
        out = out[: rng.randrange(len(out))]
    return bytes(out)


@pytest.mark.slow
def test_mutation_fuzz_of_the_reader(tmp_path: Path) -> None:
    rng = random.Random(12345)
    original = make_record(tmp_path / "records")
    data = original.read_bytes()
    paths = []
    for i in range(80):
        path = tmp_path / f"m{i:03d}.h5"
        path.write_bytes(mutate(data, rng))
        paths.append(str(path))
    results = read_in_children([str(original), *paths])
    reference = results[0]
    assert reference["kind"] == "ok"
    bad = [(p, r) for p, r in zip(paths, results[1:]) if r["kind"] not in ("ok", "error")]
    assert not bad, bad[:5]
    for path, result in zip(paths, results[1:]):
        if result["kind"] == "error":
            assert path in result["msg"], result
    outcomes = [r["kind"] if r["kind"] == "error" else (
        "same" if r["digest"] == reference["digest"] else "different")
        for r in results[1:]]
    assert outcomes.count("error") >= 20, outcomes  # most mutations are caught
    # The rest hit bytes nothing reads: a mutant never reads back as other numbers.
    different = [p for p, o in zip(paths, outcomes) if o == "different"]
    assert not different, (different, outcomes)

"""The facts only Keras' and TensorFlow's internals give: the arguments of the running
``model.fit`` call, the name users write for a ``tf.distribute`` strategy and the seed
of ``keras.utils.set_random_seed``.

No public API gives either, so each is read here and nowhere else, with a fallback that
never stops training: no fit() arguments (they are listed as ``not_visible``), the
class name of the strategy, and no seed. ``tests/test_integrations_keras_internals.py`` runs a real
``model.fit`` on each installed backend and real strategies, and fails when a release
changes what is read.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from recordkit.integrations._common import jsonable

__all__ = ["HIDDEN_FIT_ARGS", "fit_call_arguments", "random_seed", "strategy_name"]

#: fit() arguments Keras does not pass to callbacks (read from fit's frame, or fit_args).
HIDDEN_FIT_ARGS = ("batch_size", "shuffle", "validation_split", "class_weight",
                   "sample_weight", "validation_batch_size", "validation_freq")
#: fit() arguments stored as given; those of _FIT_GIVEN_ARGS only as "given or not".
_FIT_VALUE_ARGS = ("batch_size", "epochs", "initial_epoch", "steps_per_epoch", "shuffle",
                   "validation_split", "validation_steps", "validation_batch_size",
                   "validation_freq")
_FIT_GIVEN_ARGS = ("class_weight", "sample_weight", "validation_data")
#: Types a fit() argument read from fit's frame must have to be stored as a value.
_FIT_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "batch_size": (int, type(None)), "epochs": (int,), "initial_epoch": (int,),
    "steps_per_epoch": (int, type(None)), "shuffle": (bool, str),
    "validation_split": (float, int), "validation_steps": (int, type(None)),
    "validation_batch_size": (int, type(None)), "validation_freq": (int,),
}
#: How many frames above the caller are searched for fit's.
_MAX_FRAMES = 64


def fit_call_arguments(model: Any) -> dict[str, Any]:
    """The arguments of the ``model.fit`` call that is running, read from its frame: those
    of ``_FIT_VALUE_ARGS`` as passed, the others as ``<name>_given``.

    Keras passes callbacks ``epochs``, ``steps`` and ``verbose`` only. Its ``fit`` (the
    tensorflow, torch and jax trainers alike) calls ``on_train_begin`` from its own frame,
    whose local variables are then still fit's documented arguments as the user passed
    them. Nothing is read when no such frame is on the stack (a custom loop), and a value
    of an unexpected type is left out (fit() changed: store nothing wrong).
    """
    frame: FrameType | None = sys._getframe(1)
    try:
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return {}
            code = frame.f_code
            if (code.co_name == "fit" and "batch_size" in code.co_varnames
                    and frame.f_locals.get("self") is model):
                found = frame.f_locals
                facts = {k: jsonable(found[k]) for k in _FIT_VALUE_ARGS
                         if k in found and isinstance(found[k], _FIT_ARG_TYPES[k])}
                facts.update({f"{k}_given": found[k] is not None
                              for k in _FIT_GIVEN_ARGS if k in found})
                return facts
            frame = frame.f_back
        return {}
    except Exception:  # reading the caller's frame must never stop a fit
        return {}
    finally:
        del frame


def strategy_name(strategy: Any) -> str:
    """The name users write (``MultiWorkerMirroredStrategy``), not the class behind it
    (``CollectiveAllReduceStrategy``): TensorFlow's exported API name (its private
    ``_tf_api_names``) when the class has one of its own, else the class name.

    Example:
        >>> class OwnStrategy:
        ...     pass
        >>> strategy_name(OwnStrategy())
        'OwnStrategy'
    """
    try:
        exported = type(strategy).__dict__.get("_tf_api_names")
        if isinstance(exported, (tuple, list)) and exported and isinstance(exported[0], str):
            return exported[0].rsplit(".", 1)[-1]
    except Exception:  # a strange class: its name is still right
        pass
    return type(strategy).__name__


def random_seed() -> int | None:
    """The seed given to ``keras.utils.set_random_seed``, which Keras keeps in its global
    state (``keras.src.utils.rng_utils.get_random_seed``); None when none was set or this
    Keras keeps it elsewhere."""
    try:
        from keras.src.utils import rng_utils

        seed = rng_utils.get_random_seed()
    except Exception:  # another Keras: no seed, never a failed fit
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

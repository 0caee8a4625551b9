"""Hyperparameters as a run stores them: names made str, secret-looking values masked
(by name and by shape, :mod:`recordkit.masking`), values that cannot be stored faithfully
flagged, and the params hash of a configuration."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recordkit.codec import encode_params, params_hash
from recordkit.errors import RecordkitWarning
from recordkit.masking import MASK, SecretMask, is_secret_name

__all__ = ["RunParams", "masked_copy", "params_hash_of", "params_of", "secret_keys"]


def params_hash_of(params: Mapping[str, Any] | argparse.Namespace | None, *,
                   mask_secrets: bool = True) -> str:
    """The params hash a :class:`Recorder` created with *params* stores (``params_hash``):
    to find the runs of one configuration without opening a recorder.

    Example:
        >>> params_hash_of({"lr": 0.1, "depth": 2}) == params_hash_of({"depth": 2, "lr": 0.1})
        True
    """
    plain = params_of(params, "params_hash_of", {})
    masked = secret_keys(plain, "") if mask_secrets else []
    document, _ = encode_params(masked_copy(plain) if masked else plain, warn=False)
    if mask_secrets:  # as RunParams.encode stores it, without its warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordkitWarning)
            document = SecretMask(enabled=True).document(document, "hyperparameter", "",
                                                         stacklevel=1)
    return params_hash(document)


def params_of(args: Any, where: str, renamed: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Params as a dict with str names. A name that is not a str (``{1: ...}``) becomes
    its str (made unique if a str name is already taken) and is entered in *renamed*
    (new name → the original's repr), so the recorder can warn and flag it: params never
    stop training."""
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        if all(isinstance(k, str) for k in args):
            return dict(args)
        taken = {k for k in args if isinstance(k, str)}
        out: dict[str, Any] = {}
        for key, value in args.items():
            if isinstance(key, str):
                out[key] = value
                continue
            try:
                name = str(key)
            except Exception:  # a broken __str__
                name = f"<{type(key).__name__}>"
            if name in taken:
                name = f"{name} ({type(key).__name__})"
            while name in taken:
                name += "'"
            taken.add(name)
            out[name] = value
            if renamed is not None:
                try:
                    renamed[name] = f"{key!r} ({type(key).__name__})"
                except Exception:
                    renamed[name] = f"a {type(key).__name__}"
        return out
    raise TypeError(
        f"{where}: expected a mapping or an argparse.Namespace. "
        f"Received: {type(args).__name__}"
    )


def secret_keys(params: Mapping[str, Any], prefix: str,
                 active: set[int] | None = None) -> list[str]:
    """Dotted keys of params whose names look like secrets (recordkit.system's rule).
    *active*: ids of the mappings being walked, so a dict holding itself ends."""
    active = set() if active is None else active
    active.add(id(params))
    keys: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str):
            continue
        if is_secret_name(key) and value is not None and not isinstance(value, Mapping):
            keys.append(prefix + key)
        elif isinstance(value, Mapping) and id(value) not in active:
            keys.extend(secret_keys(value, f"{prefix}{key}.", active))
    active.discard(id(params))
    return keys


def masked_copy(params: Mapping[str, Any], copies: dict[int, dict[str, Any]] | None = None
                 ) -> dict[str, Any]:
    """A copy of nested params with secret-looking values masked. *copies*: the copy made
    of each mapping so far, so a mapping holding itself gives a copy holding itself."""
    copies = {} if copies is None else copies
    copy: dict[str, Any] = {}
    copies[id(params)] = copy
    for key, value in params.items():
        if isinstance(value, Mapping):
            known = copies.get(id(value))
            copy[key] = known if known is not None else masked_copy(value, copies)
        elif isinstance(key, str) and is_secret_name(key) and value is not None:
            copy[key] = MASK
        else:
            copy[key] = value
    return copy


class RunParams:
    """The params of one run as they are stored: merged from every ``extend``, names that
    are not str renamed, secret-looking values masked, values that cannot be stored
    faithfully kept as their repr; each renamed, masked or flagged key is warned about
    once, naming the record.

    Args:
        params: what the recorder was given.
        mask_secrets: store secret-looking values as ``"***"``.
    """

    def __init__(self, params: Mapping[str, Any] | argparse.Namespace | None, *,
                 mask_secrets: bool) -> None:
        self._renamed: dict[str, str] = {}  # new name -> the original's repr
        self.values: dict[str, Any] = params_of(params, "Recorder(params=...)", self._renamed)
        self._mask_secrets = mask_secrets
        self._masked: list[str] = []
        self._shapes = SecretMask(enabled=mask_secrets)  # values shaped like secrets
        self._carried: list[str] = []  # flagged in the file a resumed run continues
        #: Keys stored as their repr or renamed (the ``unserialisable`` list).
        self.flagged: list[str] = []

    def extend(self, args: Mapping[str, Any] | argparse.Namespace, where: str) -> None:
        """Merge more params (later values win)."""
        self.values.update(params_of(args, where, self._renamed))

    def continue_from(self, stored: Mapping[str, Any], flagged: list[Any]) -> None:
        """Take the params of a resumed run's file under the ones given now. The file's
        flags stay unless the key is given again: a value stored as its repr reads back
        as a plain string, which would not be flagged a second time."""
        given = set(self.values)
        self._carried = [
            key for key in flagged
            if isinstance(key, str) and not any(
                key == n or key.startswith((f"{n}.", f"{n}[", f"{n}{{")) for n in given)]
        merged = dict(stored)
        merged.update(self.values)
        self.values = merged
        self.flagged = list(self._carried)  # warned about when they were first stored

    def encode(self, path: Path, stacklevel: int) -> str:
        """The params document; warn once per key stored as its repr or renamed, once
        per secret-looking key (``api_key``, ``password``...) stored as ``***``, and once
        per key whose value holds a secret's shape (a URL's password, a token)."""
        masked = secret_keys(self.values, "") if self._mask_secrets else []
        for key in masked:
            if key not in self._masked:
                self._masked.append(key)
                warnings.warn(
                    f"recordkit: hyperparameter {key!r} looks like a secret; it is stored "
                    f"as '***' in {str(path)!r} (pass mask_secrets=False to keep it)",
                    RecordkitWarning, stacklevel=stacklevel + 1,
                )
        document, flagged = encode_params(
            masked_copy(self.values) if masked else self.values, warn=False)
        document = self._shapes.document(document, "hyperparameter", path,
                                         stacklevel=stacklevel + 1)
        renamed = [key for key in self._renamed if key in self.values]
        news = [(key, f"hyperparameter name {self._renamed[key]} is not a str; it is "
                      f"stored as {key!r}") for key in renamed]
        news += [(key, f"hyperparameter {key!r} cannot be stored faithfully; it is stored "
                       "as its repr") for key in flagged]
        for key, what in news:  # each flagged key is warned about once
            if key not in self.flagged:
                warnings.warn(f"recordkit: {what} and flagged in {str(path)!r}",
                              RecordkitWarning, stacklevel=stacklevel + 1)
        self.flagged = list(dict.fromkeys([*self._carried, *renamed, *flagged]))
        return document

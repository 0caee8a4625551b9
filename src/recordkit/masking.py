"""Secrets kept out of records: values masked by the name they are stored under
(``api_key``, ``password``) and by their shape (a URL's password, ``Password=`` in a
connection string, tokens of GitHub, Hugging Face, OpenAI, Slack, AWS key ids, JWTs, PEM
private keys), wherever text is stored: params, info, JSON extras, system info and the
command line. What is not secret stays: a URL keeps its host, only its password becomes
``***``.

Each shape is written for few false positives on what ML runs hold (paths, run names, git
commit hashes, model names such as ``sk-learn``): a token needs its prefix, its length and,
where a prefix alone is a common word, the mix of cases (and digits) that a random token
has and a name, CamelCase included, does not. No HDF5 and no warnings here: callers warn,
naming the record.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recordkit.codec import dumps_json, loads_json
from recordkit.errors import RecordkitWarning

__all__ = ["MASK", "SecretMask", "is_secret_field", "is_secret_name", "mask_argv",
           "mask_text", "mask_tree"]

MASK = "***"

#: A name holding one of these words names a secret wherever the word stands
#: (``--db-password``, ``CLIENT_SECRET``).
_SECRET_WORDS = frozenset({
    "secret", "secrets", "password", "passwords", "passwd", "passphrase", "pwd",
    "credential", "credentials", "authorization", "cookie",
})
#: These name a secret only as the last word (``--api-key``, ``--hf-token``, ``--auth``), so
#: that model sizes such as ``--key-dim`` or ``--max-tokens`` stay readable.
_SECRET_LAST_WORDS = frozenset({"key", "token", "auth"})
#: Glued compounds ending in these (``--apikey``, ``--authtoken``) count as a last word too.
_SECRET_SUFFIXES = ("key", "token")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def is_secret_name(name: str) -> bool:
    """Whether an option or parameter name looks like it holds a secret.

    Example:
        >>> [is_secret_name(n) for n in ("api_key", "hf_token", "key_dim", "max_tokens")]
        [True, True, False, False]
    """
    return _is_secret_name(name) if isinstance(name, str) else False


@functools.lru_cache(maxsize=8192)  # the same names come again with every extend()
def _is_secret_name(name: str) -> bool:
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower()) if w]
    if not words:
        return False
    last = words[-1]
    return (any(w in _SECRET_WORDS for w in words) or last in _SECRET_LAST_WORDS
            or last.endswith(_SECRET_SUFFIXES))


def is_secret_field(name: str) -> bool:
    """:func:`is_secret_name` for the fields of info and extras, where a name that is only
    ``key`` is a lookup key (an importer's ``imported_from.key``, a sort key), not a
    secret's; ``api_key``, ``token`` and ``password`` are.

    Example:
        >>> [is_secret_field(n) for n in ("key", "Key", "api_key", "token")]
        [False, False, True, True]
    """
    return name.strip().lower() != "key" and is_secret_name(name)


def _random_case(text: str) -> bool:
    """Upper and lower case each a fifth of the characters or more, and upper case letters
    side by side at least twice: what a random token has (each case about 40%, and a
    quarter of its neighbours both upper case) and a name has not, CamelCase included
    (``hf_ModelNameBertBase...``: no two capitals side by side).

    Example:
        >>> _random_case("QwErTYuiOPasDfGhJkLzXcVbNmQwErTyUi"), _random_case("ModelNameBertBase")
        (True, False)
    """
    upper = sum(c.isupper() for c in text)
    lower = sum(c.islower() for c in text)
    pairs = sum(a.isupper() and b.isupper() for a, b in itertools.pairwise(text))
    return min(upper, lower) * 5 >= len(text) and pairs >= 2


def _random_with_digit(text: str) -> bool:
    """:func:`_random_case` and a digit (``sk-`` keys are base62 or base64url)."""
    return _random_case(text) and any(c.isdigit() for c in text)


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


#: Around a token: not inside a longer word (``risk-...`` holds no ``sk-`` key); ``_`` and
#: ``-`` may stand next to one (``ci-ghp_...``, a folder named after a token).
_B = r"(?<![A-Za-z0-9])"
_E = r"(?![A-Za-z0-9])"

#: (what it is, pattern, the group that is the secret, a check of the secret or None).
#: Group 0 is the whole match; a token is masked whole.
_SHAPES: list[tuple[str, re.Pattern[str], int, Callable[[str], bool] | None]] = [
    ("a PEM private key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(.+?)(?=-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)", re.S), 1, None),
    # scheme://user:password@host: greedy up to the last @ of the word, so that a password
    # holding @ or / is masked whole (the host after it stays)
    ("a URL password", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:(\S+)@"), 1, None),
    ("a Slack webhook", re.compile(
        r"hooks\.slack\.com/services/(T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+)"), 1, None),
    ("a GitHub token", re.compile(rf"{_B}gh[pousr]_[A-Za-z0-9]{{36,251}}{_E}"), 0, None),
    ("a GitHub token", re.compile(rf"{_B}github_pat_[A-Za-z0-9_]{{22,244}}{_E}"), 0, None),
    ("a GitLab token", re.compile(rf"{_B}glpat-[A-Za-z0-9_-]{{20,50}}{_E}"), 0, None),
    ("a Hugging Face token", re.compile(rf"{_B}(?:hf|api_org)_[A-Za-z0-9]{{34,40}}{_E}"),
     0, _random_case),
    ("an API key (sk-)", re.compile(rf"{_B}sk-[A-Za-z0-9_-]{{32,200}}{_E}"), 0,
     _random_with_digit),
    ("a Stripe key", re.compile(rf"{_B}[sr]k_(?:live|test)_[A-Za-z0-9]{{16,200}}{_E}"),
     0, None),
    ("a Slack token", re.compile(rf"{_B}xox[abeoprs]-[0-9]+-[A-Za-z0-9-]{{8,200}}{_E}"),
     0, None),
    # 16 of base32's A-Z2-7, a digit among them (an all-letter one, 1 in 28, is left to
    # the name rule: ASIANLANGUAGESCORPUS is a name)
    ("an AWS access key id", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z2-7]{16}"
                                        r"(?![A-Za-z0-9])"), 0, _has_digit),
    ("a Google API key", re.compile(rf"{_B}AIza[A-Za-z0-9_-]{{35}}{_E}"), 0, None),
    ("an npm token", re.compile(rf"{_B}npm_[A-Za-z0-9]{{36}}{_E}"), 0, None),
    ("a PyPI token", re.compile(rf"{_B}pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{{50,}}{_E}"),
     0, None),
    ("a JWT", re.compile(
        r"(?<![A-Za-z0-9_.-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
        r"(?![A-Za-z0-9_.-])"), 0, None),
    ("a bearer token", re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{16,}=*)"), 1, None),
]

#: ``name=value`` inside text (a connection string's ``Password=...;``, a query's
#: ``&token=...``, a libpq ``password=...``): masked when the name is a secret's.
_KEY_VALUE = re.compile(r"(?<![\w.-])([A-Za-z_][\w.-]*)[ \t]*=[ \t]*"
                        r"(\"[^\"]*\"|'[^']*'|\{[^}]*\}|[^;&\s]+)")


def _looks_like_next_option(arg: str) -> bool:
    """Whether the word after a secret option is another option rather than its value.

    Only ``--name`` and ``-x`` count: a value such as ``-5`` or ``-Xy7!`` is masked.
    """
    return (arg.startswith("--") and len(arg) > 2) or bool(re.fullmatch(r"-[A-Za-z]", arg))


def _is_masked(secret: str) -> bool:
    return secret.strip("'\"{}") in (MASK, "")


def mask_text(text: str) -> tuple[str, list[str]]:
    """*text* with every secret-shaped part replaced by ``***``, and what was found.

    Example:
        >>> mask_text("postgres://u:PW@h/db")
        ('postgres://u:***@h/db', ['a URL password'])
        >>> mask_text("Server=h;Database=d;Password=pw;")[0]
        'Server=h;Database=d;Password=***;'
        >>> mask_text("sk-learn-pipeline-with-feature-selection")
        ('sk-learn-pipeline-with-feature-selection', [])
    """
    found: list[str] = []
    if not _TRIGGER.search(text) and "=" not in text and not (
            "-" in text and _SPACE.search(text)):
        return text, found  # most text: one search
    for kind, pattern, group, check in _SHAPES:
        if not _could_hold(kind, text):
            continue

        def replace(match: re.Match[str], kind: str = kind, group: int = group,
                    check: Callable[[str], bool] | None = check) -> str:
            secret = match.group(group)
            if _is_masked(secret) or (check is not None and not check(secret)):
                return match.group(0)
            found.append(kind)
            start, end = match.start(group) - match.start(), match.end(group) - match.start()
            whole = match.group(0)
            return whole[:start] + MASK + whole[end:]

        text = pattern.sub(replace, text)

    def key_value(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if not is_secret_name(name) or _is_masked(value):
            return match.group(0)
        found.append(f"a {name} value")
        return match.group(0)[:match.start(2) - match.start()] + MASK

    if "=" in text:
        text = _KEY_VALUE.sub(key_value, text)
    if "-" in text and _SPACE.search(text):  # a command in one string: its options
        parts = _SPACE.split(text)
        parts[::2] = _mask_words(parts[::2], found, short_p=False)
        text = "".join(parts)
    return text, found


_SPACE = re.compile(r"(\s+)")


def _mask_words(words: Sequence[str], found: list[str], *, short_p: bool) -> list[str]:
    """Command-line words with the values of secret-looking options masked (see
    :func:`mask_argv`); *short_p*: ``-p VALUE`` too."""
    masked: list[str] = []
    mask_next: str | None = None
    unless_number = False
    for arg in words:
        if mask_next is not None and not _looks_like_next_option(arg) and not (
                unless_number and _NUMBER.fullmatch(arg)):
            if not _is_masked(arg):
                found.append(f"a {mask_next} value")
            masked.append(MASK if arg else arg)
            mask_next = None
            continue
        mask_next = None
        name, equals, value = arg.partition("=")
        if equals and is_secret_name(name):
            if not _is_masked(value):
                found.append(f"a {name} value")
            masked.append(f"{name}={MASK}")
            continue
        if not equals and _is_option(arg) and is_secret_name(arg):
            mask_next, unless_number = arg, False
        elif short_p and arg == "-p":
            mask_next, unless_number = arg, True
        masked.append(arg)
    return masked


#: A fixed piece of text each token shape starts with: the regular expression is skipped
#: for text without it (most text holds none).
_PREFIXES = {
    "a GitHub token": ("gh", "github_pat_"), "a GitLab token": ("glpat-",),
    "a Hugging Face token": ("hf_", "api_org_"), "an API key (sk-)": ("sk-",),
    "a Stripe key": ("k_live_", "k_test_"), "a Slack token": ("xox",),
    "an AWS access key id": ("AKIA", "ASIA"), "a Google API key": ("AIza",),
    "an npm token": ("npm_",), "a PyPI token": ("pypi-",), "a JWT": ("eyJ",),
    "a PEM private key": ("PRIVATE KEY",), "a URL password": ("://",),
    "a Slack webhook": ("hooks.slack.com",), "a bearer token": ("earer",),
}


#: Any of :data:`_PREFIXES` (``gh`` only as a token starts it: ``high`` holds ``gh``).
_TRIGGER = re.compile(r"://|hooks\.slack\.com|gh[pousr]_|github_pat_|glpat-|hf_|api_org_|sk-"
                      r"|k_live_|k_test_|xox|AKIA|ASIA|AIza|npm_|pypi-|eyJ|PRIVATE KEY|earer")


def _could_hold(kind: str, text: str) -> bool:
    prefixes = _PREFIXES.get(kind)
    return prefixes is None or any(p in text for p in prefixes)


def mask_argv(argv: Sequence[str]) -> list[str]:
    """The command line with the values of secret-looking options replaced by ``***``.

    An option or ``NAME=value`` pair is secret when its name holds a word such as password,
    passwd, pwd, secret or credential, or ends in key, token or auth (``--api-key``,
    ``--hf_token``, ``API_KEY``, ``--apiKey``). Both ``--name=value`` and ``--name value``
    are masked; the names stay. ``-p VALUE`` (a password, as mysql takes it) is masked
    unless the value is a number (``-p 4``: a port, a patience). Every word is masked by
    shape too (:func:`mask_text`): a URL's password, tokens, key ids.
    Sizes named like ``--key-dim`` or ``--max-tokens`` are kept.

    Example:
        >>> mask_argv(["train.py", "--api-key=abc", "--password", "hunter2", "--lr", "0.1"])
        ['train.py', '--api-key=***', '--password', '***', '--lr', '0.1']
        >>> mask_argv(["mysql", "-u", "me", "-p", "hunter2", "-P", "3306"])
        ['mysql', '-u', 'me', '-p', '***', '-P', '3306']
    """
    found: list[str] = []
    return _mask_words([mask_text(str(arg))[0] for arg in argv], found, short_p=True)


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and len(arg) > 1 and not _NUMBER.fullmatch(arg)


_TAG = "$type"


def mask_tree(tree: Any, key: str, found: list[tuple[str, str]], *,
              names: Callable[[str], bool] | None = is_secret_name) -> Any:
    """A copy of a tagged-JSON tree (what :mod:`recordkit.codec` encodes: plain dicts,
    lists, strings and ``{"$type": ...}`` objects) with secrets masked: every string by
    shape, and the value under a name *names* says is a secret's (a nested mapping is
    walked instead; None: no name is). Each masked place is appended to *found* as
    (dotted key, what).

    Example:
        >>> found = []
        >>> mask_tree({"db": {"url": "postgres://u:PW@h/db"}, "api_key": 1}, "", found)
        {'db': {'url': 'postgres://u:***@h/db'}, 'api_key': '***'}
        >>> found
        [('db.url', 'a URL password'), ('api_key', 'a secret-looking name')]
    """
    if isinstance(tree, str):
        masked, kinds = mask_text(tree)
        found.extend((key, kind) for kind in dict.fromkeys(kinds))
        return masked
    if isinstance(tree, list):
        return [mask_tree(v, f"{key}[{i}]", found, names=names) for i, v in enumerate(tree)]
    if not isinstance(tree, dict):
        return tree
    tag = tree.get(_TAG)
    if tag is None:
        return _mask_mapping(tree.items(), key, found, names)
    if tag in ("repr", "path"):
        part = "repr" if tag == "repr" else "value"
        return {**tree, part: mask_tree(tree.get(part), key, found, names=names)}
    if tag in ("tuple", "set") and isinstance(tree.get("items"), list):
        suffix = "[{}]" if tag == "tuple" else "{{}}"
        return {**tree, "items": [mask_tree(v, key + suffix.format(i), found, names=names)
                                  for i, v in enumerate(tree["items"])]}
    if tag == "dict" and isinstance(tree.get("items"), list):
        items = [item for item in tree["items"] if isinstance(item, list) and len(item) == 2]
        pairs = _mask_mapping(((k, v) for k, v in items), key, found, names, pairs=True)
        return {**tree, "items": pairs}
    if tag == "dataclass" and isinstance(tree.get("fields"), dict):
        return {**tree, "fields": mask_tree(tree["fields"], key, found, names=names)}
    if tag == "enum":
        return {**tree, "value": mask_tree(tree.get("value"), key, found, names=names)}
    return tree  # numbers, arrays, bytes, times: no text


def _mask_mapping(items: Any, key: str, found: list[tuple[str, str]],
                  names: Callable[[str], bool] | None, *, pairs: bool = False) -> Any:
    prefix = f"{key}." if key else ""
    out: Any = [] if pairs else {}
    for name, value in items:
        label = f"{prefix}{name}"
        if (names is not None and isinstance(name, str) and names(name) and value is not None
                and value != MASK and not _is_mapping(value)):
            masked: Any = MASK
            found.append((label, "a secret-looking name"))
        else:
            masked = mask_tree(value, label, found, names=names)
        if pairs:
            out.append([name, masked])
        else:
            out[name] = masked
    return out


def _is_mapping(tree: Any) -> bool:
    return isinstance(tree, dict) and tree.get(_TAG) in (None, "dict")


def _warn(what: str, key: str, kind: str, path: os.PathLike[str] | str,
          stacklevel: int) -> None:
    if kind == "a secret-looking name":
        text = f"{what} {key!r} looks like a secret; it is stored as '***'"
    else:
        text = f"{what} {key!r} holds {kind}; it is stored with '***' in its place"
    warnings.warn(f"recordkit: {text} in {str(path)!r} (pass mask_secrets=False to keep it)",
                  RecordkitWarning, stacklevel=stacklevel + 1)


class SecretMask:
    """The masking of one run's stored values, and its warnings: each masked key is
    warned about once, naming the record. A bug in masking never loses a value: it is
    stored as given, with a warning.

    Args:
        enabled: False stores every value as given (``Recorder(mask_secrets=False)``).

    Example:
        >>> import warnings
        >>> mask = SecretMask(enabled=True)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     mask.info({"dsn": "postgres://u:pw@h/db", "n": 3}, "run.h5", stacklevel=1)
        {'dsn': 'postgres://u:***@h/db', 'n': 3}
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self._warned: set[tuple[str, str, str]] = set()

    def document(self, document: str, what: str, path: os.PathLike[str] | str, *,
                 stacklevel: int,
                 names: Callable[[str], bool] | None = is_secret_name) -> str:
        """A tagged-JSON document (the params) with secrets masked."""
        if not self.enabled:
            return document
        try:
            found: list[tuple[str, str]] = []
            masked = mask_tree(json.loads(document), "", found, names=names)
            if not found:
                return document
            out = json.dumps(masked, ensure_ascii=False, allow_nan=False)
        except Exception as err:  # never lose the value: store it as given
            self._failed(what, path, err, stacklevel + 1)
            return document
        self._report(found, what, path, stacklevel + 1)
        return out

    def value(self, value: Any, what: str, path: os.PathLike[str] | str, *,
              stacklevel: int, key: str = "",
              names: Callable[[str], bool] | None = is_secret_name) -> Any:
        """*value* (anything :func:`recordkit.codec.dumps_json` stores) with secrets
        masked; *value* itself when it holds none. A masked value reads back as the
        original would (tuples, paths, numpy scalars keep their type)."""
        if not self.enabled:
            return value
        try:
            found: list[tuple[str, str]] = []
            masked = mask_tree(json.loads(dumps_json(value)), key, found, names=names)
            if not found:
                return value
            out = loads_json(json.dumps(masked, ensure_ascii=False, allow_nan=False))
        except Exception as err:  # never lose the value: store it as given
            self._failed(what, path, err, stacklevel + 1)
            return value
        self._report(found, what, path, stacklevel + 1)
        return out

    def text(self, text: str, what: str, path: os.PathLike[str] | str, *,
             stacklevel: int) -> str:
        """One stored text (a failed run's ``error``) with secret shapes masked."""
        if not self.enabled:
            return text
        try:
            masked, kinds = mask_text(text)
        except Exception as err:  # never lose the text: store it as given
            self._failed(what, path, err, stacklevel + 1)
            return text
        self._report([(what, kind) for kind in dict.fromkeys(kinds)], "the", path,
                     stacklevel + 1)
        return masked

    def info(self, info: Mapping[str, Any], path: os.PathLike[str] | str, *,
             stacklevel: int) -> dict[str, Any]:
        """The run facts (``Recorder.set_info``) with secrets masked."""
        masked = self.value(dict(info), "info", path, stacklevel=stacklevel + 1,
                            names=is_secret_field)
        return masked if isinstance(masked, dict) else dict(info)

    def extra(self, key: str, value: Any, path: os.PathLike[str] | str, *,
              stacklevel: int) -> Any:
        """What ``Recorder.add(key, value)`` stores, with secrets masked: only text
        (JSON extras) can hold one; numeric arrays are returned as given, unread."""
        if not self.enabled or not _may_hold_text(value):
            return value
        return self.value(value, "extra", path, stacklevel=stacklevel + 1, key=key,
                          names=is_secret_field)

    def _report(self, found: list[tuple[str, str]], what: str,
                path: os.PathLike[str] | str, stacklevel: int) -> None:
        for key, kind in found:
            if (what, key, kind) not in self._warned:
                self._warned.add((what, key, kind))
                _warn(what, key, kind, path, stacklevel + 1)

    @staticmethod
    def _failed(what: str, path: os.PathLike[str] | str, err: Exception,
                stacklevel: int) -> None:
        warnings.warn(f"recordkit: masking secrets in the {what} of {str(path)!r} failed "
                      f"({type(err).__name__}: {err}); stored as given", RecordkitWarning,
                      stacklevel=stacklevel + 1)


def _may_hold_text(value: Any, depth: int = 0) -> bool:
    """Whether *value* may hold text: not for numbers and numeric arrays (the common
    extras, which are then not encoded twice)."""
    if value is None or isinstance(value, bool | int | float | complex):
        return False
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "O") in "biufc" and hasattr(
            value, "shape"):
        return False
    if depth < 3 and isinstance(value, list | tuple):
        return any(_may_hold_text(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return any(_may_hold_text(v, depth + 1) for v in value.values())
    return True

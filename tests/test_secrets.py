"""Secrets: no record holds environment variables, tokens or passwords.

A real child process records a run with system info on, with secrets planted in its
environment and on its command line (``--api-key=...``, ``--password ...``, ``--token``),
and the raw bytes of the record are searched for them (also as UTF-16 and base64, the
other ways text could land in a file).

Values shaped like secrets (issue 17 item 6) are masked wherever they are stored, under
any name: :data:`SHAPES` (each must be masked, keeping what is not secret) and
:data:`NEAR_MISSES` (ordinary ML values that look a little like them: each must be kept),
through params, ``extend(args)``, info, JSON extras and the stored command line, read back
from the record and searched for in its raw bytes.

Budget: ~5 s.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import recordkit
from recordkit import masking
from recordkit.errors import RecordkitWarning
from recordkit.params import params_hash_of

SECRETS = {
    "env": "envSECRETvalue-7f3a9c",
    "aws": "AKIAenvAWSsecret-0b1c2d",
    "api_key": "cliAPIKEY-d41d8cd98f",
    "password": "cliPASSWORD-e3b0c442",
    "token": "cliTOKEN-9e107d9d37",
    "dsn": "dsnPASS-5eb63bbbe0",
}
CHILD = """
import sys, recordkit
rec = recordkit.Recorder(sys.argv[1], experiment="secrets", params={"lr": 0.1})
rec.log({"loss": 1.0}, epoch=0)
print(rec.save(), flush=True)
"""


def planted_run(tmp_path: Path) -> Path:
    env = {**os.environ, "RECORDKIT_TEST_SECRET": SECRETS["env"],
           "AWS_SECRET_ACCESS_KEY": SECRETS["aws"], "HF_TOKEN": SECRETS["token"],
           "DATABASE_URL": f"postgres://me:{SECRETS['dsn']}@db/x"}
    argv = [sys.executable, "-c", CHILD, str(tmp_path), f"--api-key={SECRETS['api_key']}",
            "--password", SECRETS["password"], "--token", SECRETS["token"],
            f"--db=postgres://me:{SECRETS['dsn']}@db/x", "--visible-marker=lr0123"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = done.stdout.strip().splitlines()[-1]
    return recordkit.load(run_id, root=tmp_path).path


def test_planted_secrets_are_nowhere_in_the_file(tmp_path: Path) -> None:
    path = planted_run(tmp_path)
    raw = path.read_bytes()
    for where, secret in SECRETS.items():
        for form in (secret.encode(), secret.encode("utf-16-le"),
                     base64.b64encode(secret.encode())[:12]):
            assert form not in raw, f"the {where} secret is in {path} as {form!r}"
    record = recordkit.load(path)
    assert record.system, "system info was not captured: nothing was checked"
    assert "python" in record.system, record.system
    text = repr(record.system) + repr(record.info) + repr(record.params)
    assert all(secret not in text for secret in SECRETS.values())
    assert "RECORDKIT_TEST_SECRET" not in text  # no environment variables at all
    assert "AWS_SECRET_ACCESS_KEY" not in text


# --- values shaped like secrets ------------------------------------------------------------

#: (what, value, stored as, the secret part: in no byte of the file). Each secret part is
#: unique, so that finding it in the file names the shape that leaked.
_GHP = "ghp_" + "R4nd0mGitHubT0kenAbCdEfGhIjKlMnOpQrS"  # 4 + 36
_PAT = "github_pat_" + "11ABCDEFG0aBcDeFgHiJkL" + "_" + "Zz9" * 19 + "Zz"  # 22 + 1 + 59
_HF = "hf_" + "HAZtxslXTTIQrhbpyVAqGZuORUziJdiYmj"  # 3 + 34 random letters
_OPENAI = "sk-" + "4TIJZ9RnvIh4TOetAfG82EOMjRZA0G6vbBxKd5WVwd9ExLXa"  # legacy: 3 + 48
_PROJ = "sk-proj-" + "ZEoBFUhIiJyqGNSOvQmIQbgSc7I8gzNHj_crZ_YxzGtoBgNO"
_ANTHROPIC = "sk-ant-api03-" + "Ogu1lNGZ9jkECHuLg_Y_C04j6BD9OyUd2gQvDOVwBM3T5lnbyw-AA"
_SLACK_BOT = "xoxb-123456789012-1234567890123-SlAcKbOtT0kEnAbCdEfGhIj"
_SLACK_USER = "xoxp-223456789012-2234567890123-2234567890123-0123456789abcdef0123"
_AKIA = "AKIAQ3EGTL4WXJ2MZ5NB"
_ASIA = "ASIAY7RK2N4PQWZ3X6LM"
_JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyZWNvcmRraXQtdGVzdCIsImlhdCI6MX0."
        "Jw7SiGn4tUr3ofTh1sT0kenXyZ0123456789abcdEF")
_PEM_BODY = "MIIEowIBAAKCAQEAprivateKEYbodyLINEone0123456789\nSECONDlineOFtheKEYbody+/=="
_PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{_PEM_BODY}\n-----END RSA PRIVATE KEY-----\n"
_GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"  # 4 + 35
_GITLAB = "glpat-" + "GiTlAb9T0kEn-AbCdEfGh"

SHAPES: list[tuple[str, str, str, str]] = [
    ("URL password", "postgres://u:PWurl-31415@h/db", "postgres://u:***@h/db", "PWurl-31415"),
    ("URL password holding @ and a port", "mysql://root:p@ssPW-2718@db.local:3306/x",
     "mysql://root:***@db.local:3306/x", "ssPW-2718"),
    ("URL password, no user", "redis://:PWredis-1618@cache:6379/0",
     "redis://:***@cache:6379/0", "PWredis-1618"),
    ("connection string", "Server=h;Database=d;User Id=u;Password=PWconn-1414;",
     "Server=h;Database=d;User Id=u;Password=***;", "PWconn-1414"),
    ("connection string, quoted", "Driver=x;PWD={PWodbc;1732};Uid=u",
     "Driver=x;PWD=***;Uid=u", "PWodbc"),
    ("Azure account key", "DefaultEndpointsProtocol=https;AccountName=a;"
     "AccountKey=AzKey0123456789+/abc==;EndpointSuffix=core.windows.net",
     "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=***;"
     "EndpointSuffix=core.windows.net", "AzKey0123456789"),
    ("libpq DSN", "host=h dbname=d password=PWdsn-2236", "host=h dbname=d password=***",
     "PWdsn-2236"),
    ("query token", "https://h/api?api_key=QKquery-1123&page=2",
     "https://h/api?api_key=***&page=2", "QKquery-1123"),
    ("command in a string", "python train.py --password PWcmd-5772 --lr 0.1",
     "python train.py --password *** --lr 0.1", "PWcmd-5772"),
    ("option=value in a string", "train.py --hf-token=TKopt-4669 --epochs 3",
     "train.py --hf-token=*** --epochs 3", "TKopt-4669"),
    ("GitHub token", _GHP, "***", _GHP[4:]),
    ("GitHub token in a sentence", f"ci uses {_GHP} now", "ci uses *** now", _GHP[4:]),
    ("GitHub fine-grained token", _PAT, "***", _PAT[11:]),
    ("Hugging Face token", _HF, "***", _HF[3:]),
    ("OpenAI key", _OPENAI, "***", _OPENAI[3:]),
    ("OpenAI project key", _PROJ, "***", _PROJ[8:]),
    ("Anthropic key", _ANTHROPIC, "***", _ANTHROPIC[13:]),
    ("Slack bot token", _SLACK_BOT, "***", _SLACK_BOT[5:]),
    ("Slack user token", _SLACK_USER, "***", _SLACK_USER[5:]),
    ("AWS access key id", _AKIA, "***", _AKIA),
    ("AWS temporary key id", f"aws {_ASIA} eu", "aws *** eu", _ASIA),
    ("JWT", _JWT, "***", _JWT.split(".")[2]),
    ("bearer header", f"Authorization: Bearer {_JWT[:10]}BeArEr0123456789",
     "Authorization: Bearer ***", "BeArEr0123456789"),
    ("PEM private key", _PEM,
     "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----\n", "privateKEYbody"),
    ("Google API key", _GOOGLE, "***", _GOOGLE[4:]),
    ("GitLab token", _GITLAB, "***", _GITLAB[6:]),
]

#: Ordinary values of ML runs near a shape: each is stored as it is.
NEAR_MISSES: list[str] = [
    "sk-learn", "sk-learn-0.24.2", "scikit-learn", "sk-learn-pipeline-with-feature-selection",
    "sk-resnet50-imagenet-baseline-run-0001",
    "3f786850e387550fdab836ed7e6dc881de23001b",  # a git commit
    "3f78685", "a1b2c3d4e5f60718293a4b5c6d7e8f90",  # short commit, an MLflow run id
    "123e4567-e89b-12d3-a456-426614174000",
    "/data/hf_cache/models--bert-base-uncased/snapshots/3f786850e387550fdab836ed7e6dc881de23001b",
    "~/.cache/huggingface/hub", "s3://bucket/runs/ghp-test/", "gs://b/x/y.ckpt",
    "https://huggingface.co/bert-base-uncased", "postgres://user@db.internal:5432/mnist",
    "http://localhost:8080/v1/models", "file:///tmp/x.h5", "user@example.com",
    "meta-llama/Llama-2-7b-hf", "sentence-transformers/all-MiniLM-L6-v2", "gpt2",
    "hf_bertbaseuncasedfinetunedonsst2x", "hf_transformers_cache", "ghp_baseline",
    "adam-relu-lr1e-3", "xoxo-run", "xoxb-bot", "AKIA", "ASIANFOODDATASET2020V1",
    "AKIA-exp-2024", "ASIANLANGUAGESCORPUS", "hf_ModelNameBertBaseUncasedFineTunedSst",
    "sk-ResNet50ImageNetBaseline2024RunFinal", "sk-ab12-short-2024",
    "max_tokens=512,key_dim=64", "tokenizer=bert-base;lr=1e-3",
    "num_keys=8 tokens=512", "eyJhbGciOiJIUzI1NiJ9", "v1.eyJ.final",
    "-----BEGIN CERTIFICATE-----\nMIIBcertBODY\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMIIBpublicBODY\n-----END PUBLIC KEY-----",
    "--max-tokens 512 --key-dim 64 --tokenizer gpt2", "-5e-4", "bearer of bad news",
    "entity/project/1a2b3c4d", "AIza", "glpat-short", "sk_live", "résumé-ü-模型",
]


def _shape_params() -> dict:
    """Every shape and near miss under an ordinary name, nested as configs are."""
    return {"shapes": {f"s{i}": value for i, (_, value, _, _) in enumerate(SHAPES)},
            "near": {f"n{i}": value for i, value in enumerate(NEAR_MISSES)},
            "db": {"url": SHAPES[0][1]}, "listed": [SHAPES[10][1], NEAR_MISSES[0]],
            "paired": (SHAPES[19][1], 3)}


def _check_masked(stored: dict, path: Path) -> None:
    """*stored* (what read back of :func:`_shape_params`) holds every shape masked and every
    near miss as given, and no secret part is in the file's bytes."""
    shapes = stored["shapes"]
    wrong = [(what, shapes[f"s{i}"], expected)
             for i, (what, _, expected, _) in enumerate(SHAPES)
             if shapes[f"s{i}"] != expected]
    assert not wrong, "\n".join(f"{w}: stored {s!r}, expected {e!r}" for w, s, e in wrong)
    kept = [value for i, value in enumerate(NEAR_MISSES) if stored["near"][f"n{i}"] != value]
    assert not kept, f"near misses changed: {kept}"
    assert stored["db"] == {"url": "postgres://u:***@h/db"}
    assert list(stored["listed"]) == ["***", NEAR_MISSES[0]]
    assert tuple(stored["paired"]) == ("***", 3)
    raw = path.read_bytes()
    leaked = [what for what, _, _, secret in SHAPES if secret.encode() in raw]
    assert not leaked, f"in the bytes of {path}: {leaked}"


def _masking_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RecordkitWarning)
            and "mask_secrets=False" in str(w.message)]


@pytest.mark.parametrize(("what", "value", "expected", "secret"), SHAPES,
                         ids=[s[0] for s in SHAPES])
def test_each_shape_is_masked(what: str, value: str, expected: str, secret: str) -> None:
    masked, found = masking.mask_text(value)
    assert masked == expected and found, (what, masked)
    assert secret not in masked
    assert masking.mask_text(masked) == (masked, [])  # masking again finds nothing new


@pytest.mark.parametrize("value", NEAR_MISSES)
def test_each_near_miss_is_kept(value: str) -> None:
    assert masking.mask_text(value) == (value, [])


def test_params_are_masked_by_shape(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = recordkit.Recorder(tmp_path, params=_shape_params(), system=False)
        rec.log({"loss": 1.0}, epoch=0)
        rec.save()
    record = recordkit.load(rec.path)
    _check_masked(record.params, rec.path)
    messages = _masking_warnings(caught)
    for key in ("shapes.s0", "db.url", "listed[0]", "paired[0]"):  # each masked key named
        assert any(f"'{key}'" in m and str(rec.path) in m for m in messages), (key, messages)
    assert not any("'near." in m for m in messages), messages
    assert len(messages) == len(set(messages))  # once per key
    with warnings.catch_warnings(record=True) as caught:  # mask_secrets=False: as given
        warnings.simplefilter("always")
        kept = recordkit.Recorder(tmp_path, params=_shape_params(), system=False,
                                  mask_secrets=False)
        kept.save()
    assert recordkit.load(kept.path).params == _shape_params()
    assert not _masking_warnings(caught)


def test_extend_with_argparse_masks_by_shape(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db-url")
    parser.add_argument("--note")
    parser.add_argument("--model")
    parser.add_argument("--commit")
    args = parser.parse_args(["--db-url", "postgres://u:PWargs-1@h/db", "--note", _HF,
                              "--model", "sk-learn", "--commit", NEAR_MISSES[5]])
    rec = recordkit.Recorder(tmp_path, system=False, params={"lr": 0.1})
    with pytest.warns(RecordkitWarning) as caught:
        rec.extend(args)
    messages = [str(w.message) for w in caught]
    assert any("'db_url' holds a URL password" in m for m in messages), messages
    assert any("'note' holds a Hugging Face token" in m for m in messages), messages
    assert not any("'model'" in m or "'commit'" in m for m in messages), messages
    rec.save()
    record = recordkit.load(rec.path)
    assert record.params == {"lr": 0.1, "db_url": "postgres://u:***@h/db", "note": "***",
                             "model": "sk-learn", "commit": NEAR_MISSES[5]}
    assert b"PWargs-1" not in rec.path.read_bytes()
    assert _HF.encode() not in rec.path.read_bytes()
    # the stored hash is the masked document's, as params_hash_of computes it
    assert record.params_hash == params_hash_of({"lr": 0.1, **vars(args)})
    assert record.params_hash != params_hash_of({"lr": 0.1, **vars(args)},
                                                mask_secrets=False)


def test_a_masking_bug_never_loses_a_param(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault injected into the shape walk: the value is stored as given, with a warning
    (training goes on, nothing is lost)."""
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("injected masking bug")

    monkeypatch.setattr(masking, "mask_tree", broken)
    with pytest.warns(RecordkitWarning, match="masking secrets in the hyperparameter .* "
                                              "failed .*injected masking bug"):
        rec = recordkit.Recorder(tmp_path, params={"db": "postgres://u:pw@h/db"},
                                 system=False)
    rec.save()
    assert recordkit.load(rec.path).params == {"db": "postgres://u:pw@h/db"}


def test_info_is_masked_by_shape(tmp_path: Path) -> None:
    rec = recordkit.Recorder(tmp_path, system=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.set_info(_shape_params())
        rec.set_info({"lr": 0.1})  # what was masked is not warned about again
    rec.save()
    _check_masked(recordkit.load(rec.path).info, rec.path)
    messages = _masking_warnings(caught)
    assert any("info 'db.url' holds a URL password" in m for m in messages), messages
    assert len(messages) == len(set(messages)) == len(SHAPES) + 3, messages
    kept = recordkit.Recorder(tmp_path, system=False, mask_secrets=False)
    kept.set_info(_shape_params())
    kept.save()
    assert recordkit.load(kept.path).info == _shape_params()


def test_json_extras_are_masked_by_shape(tmp_path: Path) -> None:
    rec = recordkit.Recorder(tmp_path, system=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.add("config", _shape_params())
        rec.add("losses", [2.0, 1.5])  # numbers: stored as an array, untouched
    rec.save()
    record = recordkit.load(rec.path)
    _check_masked(record.extras["config"], rec.path)
    assert record.extras["losses"] == [2.0, 1.5]
    messages = _masking_warnings(caught)
    assert any("extra 'config.db.url' holds a URL password" in m for m in messages), messages
    assert len(messages) == len(SHAPES) + 3, messages
    kept = recordkit.Recorder(tmp_path, system=False, mask_secrets=False)
    kept.add("config", _shape_params())
    kept.save()
    assert recordkit.load(kept.path).extras["config"] == _shape_params()


def test_command_line_and_system_are_masked_by_shape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / f"ci-{_GHP}"  # a folder named with a token: cwd, storage path
    folder.mkdir()
    monkeypatch.chdir(folder)
    argv = ["train.py", "--db-url", "postgres://u:PWcli-1@h/db", "-p", "PWshort-2",
            "--password", "PWlong-3", f"--token={_SLACK_BOT}", "--note", _OPENAI,
            "--workers", "-p", "4", "--model", "sk-learn", "--commit", NEAR_MISSES[5],
            "--run", "adam-relu-lr1e-3", f"--key={_AKIA}"]
    monkeypatch.setattr(sys, "argv", argv)
    rec = recordkit.Recorder(tmp_path / "records", system=True)
    rec.save()
    record = recordkit.load(rec.path)
    assert record.system["command"] == [
        "train.py", "--db-url", "postgres://u:***@h/db", "-p", "***", "--password", "***",
        "--token=***", "--note", "***", "--workers", "-p", "4", "--model", "sk-learn",
        "--commit", NEAR_MISSES[5], "--run", "adam-relu-lr1e-3", "--key=***"]
    assert record.system["cwd"] == str(tmp_path / "ci-***")
    raw = rec.path.read_bytes()
    for secret in ("PWcli-1", "PWshort-2", "PWlong-3", _SLACK_BOT[5:], _OPENAI[3:],
                   _GHP[4:], _AKIA):
        assert secret.encode() not in raw, secret
    assert sys.argv == argv  # masked in a copy


def test_a_failed_runs_error_is_masked_by_shape(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RuntimeError):
        warnings.simplefilter("always")
        with recordkit.Recorder(tmp_path, system=False) as rec:
            raise RuntimeError(f"cannot reach postgres://u:PWerr-1@h/db with {_HF}")
    record = recordkit.load(rec.path)
    assert record.status == "failed"
    assert "cannot reach postgres://u:***@h/db with ***" in record.error, record.error
    raw = rec.path.read_bytes()
    assert b"PWerr-1" not in raw and _HF[3:].encode() not in raw
    assert any("'error' holds a URL password" in m for m in _masking_warnings(caught))


def test_system_info_given_as_a_mapping_is_masked_by_shape(tmp_path: Path) -> None:
    """What importers pass: the original machine's description."""
    given = {"python": "3.8.5", "cwd": f"/ci/{_GHP}", "notes": [SHAPES[0][1]],
             "git": {"commit": NEAR_MISSES[5]}}
    rec = recordkit.Recorder(tmp_path, system=given)
    rec.save()
    assert recordkit.load(rec.path).system == {
        "python": "3.8.5", "cwd": "/ci/***", "notes": ["postgres://u:***@h/db"],
        "git": {"commit": NEAR_MISSES[5]}}
    assert _GHP[4:].encode() not in rec.path.read_bytes()

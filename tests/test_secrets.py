"""Secrets: system info never holds environment variables, tokens or passwords.

A real child process records a run with system info on, with secrets planted in its
environment and on its command line (``--api-key=...``, ``--password ...``, ``--token``),
and the raw bytes of the record are searched for them (also as UTF-16 and base64, the
other ways text could land in a file).

Budget: ~3 s.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import recordkit

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

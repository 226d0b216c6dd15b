"""`ieiw deploy` as a user runs it: a few lines saying what was made and what to do next, in this
project's words (`ieiw worker`), with Prefect's own advice kept in a log file."""

from __future__ import annotations

import os
import subprocess
import sys


def test_deploy_says_what_it_made_in_a_few_lines(prefect_api, tmp_path):
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "TQDM_DISABLE": "1", "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", "deploy"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) < 25, done.stdout
    text = " ".join(done.stdout.split())
    for name in ("build", "removal", "grounded_removal", "replacement", "score", "filter"):
        assert f"ieiw_build/{name}" in text
    assert "ieiw worker" in text and "prefect worker start" not in text
    assert "IEIW_DEMO_DIR" in text  # where a deployed demo writes: the worker's environment says
    log = tmp_path / ".ieiw" / "logs" / "prefect-deploy.log"
    assert "prefect" in log.read_text().lower()  # Prefect's own output, kept

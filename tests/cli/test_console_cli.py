"""``run.py`` serves the operator console: it prints the dashboard URL, the URL answers with
the page, ``/metrics`` and ``/healthz`` while the session runs, ``--http off`` serves nothing,
and a bad ``--http`` value is a clear error (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli.test_replay_cli import ROOT


def test_paper_prints_the_dashboard_url_and_serves_metrics_while_it_runs(
        tmp_path: Path) -> None:
    session = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "paper", "--positions",
                                "3", "--duration", "30", "--http", "127.0.0.1:0"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert session.stdout is not None
        line = session.stdout.readline()  # the first line printed: the dashboard's URL
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        assert "(operator token: data/operator-token)" in line
        url = line.split()[1]
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            assert "Position tracker" in http.get("/").text
            deadline = time.monotonic() + 20
            active = 'tracker_positions{account="paper",status="ACTIVE"} 3.0'
            while active not in http.get("/metrics").text:
                assert time.monotonic() < deadline, "three positions never showed"
                time.sleep(0.2)
            assert http.post("/api/flatten").status_code == 401
        token = (tmp_path / "data" / "operator-token").read_text().strip()
        assert oct((tmp_path / "data" / "operator-token").stat().st_mode & 0o777) == "0o600"
    finally:
        session.terminate()
        _, err = session.communicate(timeout=60)
    assert session.returncode == 0, err[-2000:]
    assert token not in err  # never logged


def test_http_off_serves_nothing_and_a_bad_value_is_a_clear_error(tmp_path: Path) -> None:
    quiet = subprocess.run([sys.executable, str(ROOT / "run.py"), "paper", "--positions", "0",
                            "--duration", "1", "--http", "off"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "dashboard:" not in quiet.stdout
    assert not (tmp_path / "data" / "operator-token").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "paper", "--http", "8600"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--http: expected HOST:PORT or off, got '8600'" in bad.stderr

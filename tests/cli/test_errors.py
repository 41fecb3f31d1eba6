"""Every error path of the command line: one line on stderr naming the culprit, exit 2, no
traceback, no secret; nothing started and nothing written."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli.session import write_session
from tests.cli.test_replay_cli import run

SECRET = "s3cr3t-pw"


def _cases(tmp: Path) -> list[tuple[list[str | Path], str]]:
    orders, ticks, _ = write_session(tmp)
    (tmp / "bad.toml").write_text("not toml [\n", encoding="utf-8")
    (tmp / "range.toml").write_text("[policy]\nstop_loss_pct = 7\n", encoding="utf-8")
    (tmp / "bad.csv").write_text("ts,segment,security_id,ltp\nnope\n", encoding="utf-8")
    (tmp / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    replay: list[str | Path] = ["replay", "--orders", orders]
    return [
        (["positions", "--db", "foo://x"], "unsupported database URL scheme 'foo'"),
        (["positions", "--db", f"foo://u:{SECRET}@h/x"], "scheme 'foo'"),
        (["positions", "--db", "sqlite://relative"], "sqlite:///relative/path"),
        (["positions", "--db", f"no-scheme-{SECRET}"], "no valid scheme"),
        (["positions", "--redis", f"http://u:{SECRET}@h:1/0"], "--redis"),
        (["positions", "--redis", "redis://h:port/0"], "Port could not be cast"),
        (["positions", "--status", "OPENISH"], "OPENISH"),
        (["positions", "--policy", tmp / "missing.toml"], "missing.toml: cannot read"),
        (["positions", "--policy", tmp / "bad.toml"], "not valid TOML"),
        (["positions", "--policy", tmp / "range.toml"], "policy.stop_loss_pct"),
        ([*replay, "--db", "foo://x"], "scheme 'foo'"),
        ([*replay, "--redis", "foo://x"], "--redis"),
        (["replay", "--orders", tmp / "missing.jsonl"], "missing.jsonl: cannot read"),
        (["replay", "--orders", tmp], "cannot read"),
        (["replay", "--orders", tmp / "bad.jsonl"], "bad.jsonl:1"),
        ([*replay, "--ticks", tmp / "missing.csv"], "missing.csv: cannot read"),
        ([*replay, "--ticks", tmp / "bad.csv"], "bad.csv:2"),
        ([*replay, "--report", tmp], "is a folder"),
        ([*replay, "--report", "/proc/none/r.json"], "cannot create its folder"),
        ([*replay, "--trace", "/proc/none/t.jsonl"], "cannot create its folder"),
        (["replay"], "--orders"),
        (["replay", "--days", tmp / "no-such-folder"], "not a folder"),
        (["replay", "--days", tmp, "--orders", orders], "not both"),
        (["replay", "--orders", orders, "--orders", orders, "--ticks", ticks],
         "one tape per --orders file"),
        ([*replay, "--orders", orders, "--trace", tmp / "t.jsonl"], "--trace keep one replay"),
        ([*replay, "--policy", tmp / "bad.toml"], "not valid TOML"),
        (["paper", "--duration", "abc"], "not a number: 'abc'"),
        (["paper", "--duration", "-1"], "must be a positive number"),
        (["paper", "--positions", "many"], "invalid int value: 'many'"),
        (["paper", "--positions", "-3"], "paper.positions"),
        (["paper", "--db", "foo://x"], "scheme 'foo'"),
        (["paper", "--bogus"], "unrecognized arguments: --bogus"),
        (["trace", tmp / "missing.jsonl"], "missing.jsonl: no such file"),
        (["trace", ticks], "not a JSON trace record"),
        (["trace", ticks, "--format", "pdf"], "invalid choice: 'pdf'"),
        (["dance"], "invalid choice: 'dance'"),
        (["paper", "--account", "desk a"], "account: malformed account id 'desk a'"),
        (["positions", "--account", "a.b"], "malformed account id 'a.b'"),
    ]


# It starts run.py for every case (38 interpreter start-ups, a few side by side: each is mostly
# imports, so the cores bound it): a minute or more on a loaded 2-core box.
@pytest.mark.timeout(600)
def test_every_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    failures = []
    cases = _cases(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda case: run(*case[0], cwd=tmp_path), cases))
    for (args, expected), done in zip(cases, runs, strict=True):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        ok = (done.returncode == 2 and len(lines) == 1 and expected in lines[0]
              and SECRET not in done.stderr and "Traceback" not in done.stderr
              and not done.stdout.strip())
        if not ok:
            failures.append((args, done.returncode, done.stderr[-600:]))
    assert not failures, failures
    assert not (tmp_path / "data").exists()  # nothing was opened on the way to the error


@pytest.mark.parametrize("args", [["--help"], ["replay", "--help"]])
def test_help_is_not_an_error(tmp_path: Path, args: list[str]) -> None:
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout

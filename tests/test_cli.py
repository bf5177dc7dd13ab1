"""The command line: help, version, admin chores on a real store, one-line errors, the actors listing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.cluster_record import ClusterRecord, write_record

runner = CliRunner()


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite store and data directory, through the same WA_ROUTER_* variables a user sets."""
    monkeypatch.setenv("WA_ROUTER_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("WA_ROUTER_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    monkeypatch.setenv("WA_ROUTER_CLUSTER_RECORD_FILE", str(tmp_path / "gateway.json"))
    return tmp_path


def test_help_lists_every_command_without_issue_numbers_or_backticks() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "bench", "soak", "admin", "actors"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command
    for args in (["--help"], ["admin", "--help"], ["serve", "--help"], ["actors", "--help"], ["demo", "--help"]):
        text = runner.invoke(app, args).output
        assert "`" not in text and not re.search(r"issue \d", text), (args, text)


def test_version_in_a_real_subprocess() -> None:
    script = Path(sys.executable).parent / "wa-router"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"wa-router \d+\.\d+\.\d+\S*\n", done.stdout)


def test_bench_keeps_its_flags_and_the_gateway_does_not_import_bench() -> None:
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for flag in ("--profile", "--output", "--smoke", "--rates", "--cluster-workers"):
        assert flag in result.output
    probe = ("import sys, gateway.app, gateway.cli\n"
             "print(any(m == 'bench' or m.startswith('bench.') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.strip() == "False", done.stderr


def test_admin_create_org_issue_token_rotate_and_list(store_env: Path) -> None:
    created = runner.invoke(app, ["admin", "create-org", "Acme Support", "--owner-name", "Olivia",
                                  "--owner-email", "olivia@acme.test"])
    assert created.exit_code == 0, created.output
    owner_token = re.search(r"owner token \(shown once\): (\S+)", created.output)
    assert owner_token and "organization 1 created; owner user 1" in created.output

    listed = runner.invoke(app, ["admin", "orgs"])
    assert listed.exit_code == 0 and "Acme Support" in listed.output

    issued = runner.invoke(app, ["admin", "issue-token", "1"])
    assert issued.exit_code == 0
    new_token = re.search(r"\(shown once\): (\S+)", issued.output)
    assert new_token and new_token.group(1) != owner_token.group(1)

    first = runner.invoke(app, ["admin", "rotate-token"])
    second = runner.invoke(app, ["admin", "rotate-token"])
    tokens = [re.search(r"\(shown once\): (\S+)", r.output) for r in (first, second)]
    assert all(tokens) and tokens[0].group(1) != tokens[1].group(1)  # type: ignore[union-attr]
    _assert_tokens_valid(store_env, [owner_token.group(1), new_token.group(1), tokens[1].group(1)],  # type: ignore[union-attr]
                         revoked=[tokens[0].group(1)])  # type: ignore[union-attr]


def _assert_tokens_valid(store: Path, valid: list[str], revoked: list[str]) -> None:
    import sqlite3

    from gateway.security import hash_token

    with sqlite3.connect(store / "cli.db") as db:
        stored = {row[0] for row in db.execute("SELECT token_hash FROM api_tokens")}
    assert all(hash_token(t) in stored for t in valid)
    assert not any(hash_token(t) in stored for t in revoked)


def test_errors_are_one_line_without_traceback(store_env: Path) -> None:
    for args, message in (
        (["admin", "issue-token", "99"], "error: user 99 not found"),
        (["admin", "create-org", "X", "--owner-name", "O", "--owner-email", "not-an-email"], "error: owner.email"),
        (["actors"], "error: no running gateway recorded in"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    runner.invoke(app, ["admin", "create-org", "Dup", "--owner-name", "O", "--owner-email", "o@x.test"])
    result = runner.invoke(app, ["actors", "--record", str(store_env / "missing.json")])
    assert result.exit_code == 1 and "missing.json" in result.output


def test_actors_reports_a_stale_record(store_env: Path) -> None:
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    write_record(store_env / "gateway.json", ClusterRecord(
        gateway_url="http://127.0.0.1:1", ray_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1",
        namespace="wa-router", token_auth=False, pid=int(dead_pid)))
    result = runner.invoke(app, ["actors"])
    assert result.exit_code == 1 and f"(pid {dead_pid}) is not running" in result.output
    assert json.loads((store_env / "gateway.json").read_text())["namespace"] == "wa-router"


def test_banner_shows_the_ray_address_and_how_to_get_an_admin_token(store_env: Path) -> None:
    from types import SimpleNamespace

    from config.settings import Settings
    from gateway.cli import banner_lines

    def banner(generated: str | None, configured: str | None) -> str:
        runtime = SimpleNamespace(settings=Settings(admin_token=configured), generated_admin_token=generated)
        app_ = SimpleNamespace(state=SimpleNamespace(runtime=runtime, dashboard_url="http://127.0.0.1:8265"))
        return "\n".join(banner_lines(app_))  # type: ignore[arg-type]

    first = banner("war_generated", None)
    assert "Ray address:" in first and "Ray dashboard:   http://127.0.0.1:8265" in first
    assert "admin token:     war_generated   (shown once" in first
    assert "wa-router admin rotate-token" in banner(None, None)
    assert "WA_ROUTER_ADMIN_TOKEN" in banner(None, "s" * 43)


def test_readme_opens_with_the_demo_and_the_screenshots_and_sets_up_with_two_commands() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:15])
    assert "make demo" in first_screen and "wa-router demo" in first_screen
    shots = re.findall(r"\(docs/([\w-]+\.png)\)", first_screen)
    assert len(shots) >= 3 and all((Path(__file__).resolve().parents[1] / "docs" / s).is_file() for s in shots)
    setup = readme.split("## Set-up", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in setup.strip().splitlines()] == ["make run", "make test"]


def test_soak_runs_its_three_scenarios_from_the_checkout_whatever_the_directory_it_starts_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make soak` starts `wa-router soak`, whose scenarios are the suite's modules: started anywhere, it runs each
    from the checkout (they are not part of the installed package), and fails when one fails."""
    from gateway import cli

    calls: list[tuple[list[str], str, str]] = []

    def call(command: list[str], cwd: Path, env: dict[str, str]) -> int:
        calls.append((command, str(cwd), env["PYTHONPATH"]))
        return 3 if command[2] == "tests.node_loss" else 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", call)
    result = runner.invoke(app, ["soak"])
    checkout = str(Path(__file__).resolve().parents[1])
    assert [command[2:] for command, _, _ in calls] == [["tests.fault_injection", "--long"],
                                                         ["tests.node_loss", "--long"],
                                                         ["tests.two_gateways", "--long"]]
    assert all(cwd == checkout and path.split(os.pathsep)[0] == checkout for _, cwd, path in calls)
    assert result.exit_code == 3

"""`wa-router demo` end to end: a real process starts everything, routes conversations, stops on Ctrl-C.

While it runs, `wa-router actors` lists its routing actors from the address the demo's gateway recorded.
The test waits (polling) until customers wrote, an agent took a conversation and a reply reached Meta,
then sends the Ctrl-C a user would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.background_server import free_port


def _wait_for_traffic(welcome: str, port: int, simulator_port: int, timeout_s: float = 180.0) -> None:
    """Until the demo has 3 conversations, one of them taken by an agent, and a reply at Meta (the simulator)."""
    token = re.search(r"supervisor console: \S+/#token=(war_\S+)", welcome)
    assert token, welcome
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    seen: tuple[int, int, int] | str = "nothing yet"
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            try:  # a busy machine may answer slowly or not at all for a moment: asked again
                org_id = http.get("/v1/me").raise_for_status().json()["org"]["id"]
                states = [t["state"] for t in http.get(f"/v1/orgs/{org_id}/transactions",
                                                       params={"limit": 200}).raise_for_status().json()["items"]]
                at_meta = httpx.get(f"http://127.0.0.1:{simulator_port}/_sim/sent_messages",
                                    timeout=30).raise_for_status().json()["data"]
            except httpx.HTTPError as exc:
                seen = repr(exc)
            else:
                seen = (len(states), sum(s in ("assigned", "closed") for s in states), len(at_meta))
                if seen[0] >= 3 and seen[1] >= 1 and seen[2] >= 1:
                    return
            time.sleep(0.5)
    raise AssertionError(f"no traffic within {timeout_s:.0f} s: (conversations, handled, replies at Meta) {seen}")


def test_demo_routes_conversations_lists_actors_and_stops(tmp_path: Path) -> None:
    port, simulator_port, dashboard_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "WA_ROUTER_RAY_DASHBOARD_PORT": str(dashboard_port),
           "WA_ROUTER_CLUSTER_RECORD_FILE": str(tmp_path / "gateway.json")}
    command = [sys.executable, "-m", "gateway.cli"]
    with (tmp_path / "stderr").open("w") as stderr:
        # --duration only bounds a demo the Ctrl-C below would fail to stop (the test then fails on stderr).
        # Ctrl-C reaches the demo as a terminal's would even when this suite runs as a background job (whose
        # children inherit SIGINT ignored).
        # A customer writes every second (4 s by default): the conversations the test waits for come sooner.
        demo = subprocess.Popen([*command, "demo", "--port", str(port), "--simulator-port", str(simulator_port),
                                 "--duration", "600", "--customer-every", "1"], stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert demo.stdout is not None
            lines: list[str] = []
            for line in demo.stdout:  # until the welcome is complete
                lines.append(line)
                if line.lstrip().startswith("agents:"):
                    break
            welcome = "".join(lines)
            assert "wa-router demo is running" in welcome, (tmp_path / "stderr").read_text()[-2000:]
            _wait_for_traffic(welcome, port, simulator_port)
            actors = subprocess.run([*command, "actors"], capture_output=True, text=True, timeout=180, env=env)
            assert actors.returncode == 0, actors.stderr
            assert "namespace wa-router-demo" in actors.stdout
            for name in ("inbox:1:1", "inbox:1:5", "agent:1:2"):
                assert name in actors.stdout and "ALIVE" in actors.stdout, actors.stdout
            demo.send_signal(signal.SIGINT)  # Ctrl-C
            out = welcome + demo.stdout.read()
            assert demo.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()[-2000:]
        finally:
            if demo.poll() is None:
                demo.kill()
    assert "stopping the demo" in (tmp_path / "stderr").read_text()  # stopped by the Ctrl-C, not the bound
    gateway = f"http://127.0.0.1:{port}"
    assert re.search(rf"supervisor console: {gateway}/#token=war_\S+", out), out
    assert re.search(rf"agent console: +{gateway}/#token=war_\S+", out), out
    assert re.search(r"Ray dashboard: +http://\S+", out) and re.search(r"Ray address: +\S+:\d+", out), out
    summary = re.search(r"demo summary: (\d+) conversations, (\d+) handled by an agent \((\d+) closed\)"
                        r".*; (\d+) replies", out)
    assert summary, out
    conversations, handled, _closed, replies = (int(g) for g in summary.groups())
    assert conversations >= 3 and handled >= 1 and replies >= 1, out
    assert not (tmp_path / "gateway.json").exists()  # the stopped gateway's record is gone
    # Everything it started has stopped: nothing listens on its ports any more.
    for p in (port, simulator_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger
            sock.bind(("127.0.0.1", p))  # fails while anything still listens

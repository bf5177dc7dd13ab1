"""No actor is handed a secret: constructor arguments carry a reference to the key (only the sender
resolves it), and Ray's processes do not inherit the gateway's WA_ROUTER_* variables."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from actors.ray_connection import withheld_environment
from actors.ray_directory import RayDirectory
from config.actor_settings import ActorSettings
from config.settings import Settings
from gateway.key_handoff import KeyHandoff
from store.crypto import SECRET_KEY_ENV, resolve_key


def test_actor_settings_and_directory_carry_no_key(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", secret_key=key,
                        admin_token="admin-" + "a" * 40, secret_key_file=tmp_path / "k")
    for carried in (ActorSettings.from_settings(settings), RayDirectory(settings)._settings):
        pickled = pickle.dumps(carried)  # what Ray stores in each actor's creation spec
        assert key.encode() not in pickled and b"admin-aaaa" not in pickled
        assert not any("key" in name and name != "secret_key_file" for name in vars(carried))


def test_the_sender_resolves_the_key_from_its_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    missing = tmp_path / "none.key"
    with pytest.raises(RuntimeError, match="no encryption key"):
        resolve_key(missing)
    assert not missing.exists()  # never created: a second key would strand what the first encrypted
    missing.write_bytes(b"file-key\n")
    assert resolve_key(missing) == b"file-key"
    monkeypatch.setenv(SECRET_KEY_ENV, "node-key")  # a cluster node's own setting wins
    assert resolve_key(missing) == b"node-key"


def test_an_explicit_key_reaches_senders_as_a_private_file_removed_at_stop(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    key = Fernet.generate_key().decode()
    handoff = KeyHandoff(Settings(secret_key=key, secret_key_file=tmp_path / "unused.key"))
    try:
        assert handoff.key_file != tmp_path / "unused.key"
        assert handoff.key_file.stat().st_mode & 0o777 == 0o600
        assert handoff.key_file.parent.stat().st_mode & 0o777 == 0o700
        assert resolve_key(handoff.key_file) == key.encode()
        directory = RayDirectory(Settings(secret_key=key), key_file=handoff.key_file)
        assert directory._settings.secret_key_file == handoff.key_file
    finally:
        handoff.close()
    assert not handoff.key_file.exists()
    plain = KeyHandoff(Settings(secret_key_file=tmp_path / "k.key"))
    assert plain.key_file == tmp_path / "k.key"


def test_withheld_environment_restores_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_ROUTER_ADMIN_TOKEN", "t0ken")
    with withheld_environment("WA_ROUTER_"):
        assert "WA_ROUTER_ADMIN_TOKEN" not in os.environ
    assert os.environ["WA_ROUTER_ADMIN_TOKEN"] == "t0ken"


_RAY_ENV_SCRIPT = """
import json, os
import ray
from actors.ray_connection import connect_ray, disconnect_ray
from config.settings import Settings

connection = connect_ray(Settings(ray_namespace="env-check", ray_num_cpus=1, ray_dashboard_port=0))
try:
    @ray.remote(num_cpus=0)
    def worker_environment():
        return sorted(name for name in os.environ if name.startswith("WA_ROUTER_"))

    seen = ray.get(worker_environment.remote())
    print(json.dumps({"worker": seen, "driver_still_has": sorted(n for n in os.environ if n.startswith("WA_ROUTER_"))}))
finally:
    disconnect_ray(connection)
"""


def test_ray_processes_do_not_inherit_the_gateways_secrets() -> None:
    env = {**os.environ, "WA_ROUTER_ADMIN_TOKEN": "admin-" + "b" * 40, SECRET_KEY_ENV: Fernet.generate_key().decode()}
    done = subprocess.run([sys.executable, "-c", _RAY_ENV_SCRIPT], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["worker"] == []
    assert result["driver_still_has"] == ["WA_ROUTER_ADMIN_TOKEN", SECRET_KEY_ENV]

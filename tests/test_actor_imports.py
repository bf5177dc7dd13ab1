"""What routing actors' processes load: no pydantic-settings in any, no SQLAlchemy in an agent's.

An actor's process imports its class's module and unpickles its constructor arguments; the checks run
both in a fresh interpreter. Actors get `ActorSettings`, not pydantic's `Settings` (a Ray worker imports
pydantic for its serialization context anyway, so this keeps out pydantic-settings: 1.5 MiB per agent
actor, measured). Agents, the many processes, reach the store through `store.agent_store` (plain SQL on
the driver): SQLAlchemy, its ORM and the mapped tables are ~26 MiB per process.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from config.actor_settings import ActorSettings
from config.settings import Settings

ACTOR_PROCESS = """
import pickle, sys
import actors.agent_actor, actors.inbox_actor, actors.sender_actor
settings = pickle.loads(sys.stdin.buffer.read())
print(type(settings).__name__, settings.actor_call_timeout_s)
unwanted = {'pydantic', 'pydantic_core', 'pydantic_settings', 'dotenv', 'fastapi'}
print(sorted({m.split('.')[0] for m in sys.modules} & unwanted))
"""


def test_actor_processes_load_no_pydantic(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", actor_call_timeout_s=3.5)
    given = pickle.dumps(ActorSettings.from_settings(settings))
    done = subprocess.run([sys.executable, "-c", ACTOR_PROCESS], input=given, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == ["ActorSettings 3.5", "[]"]


# An agent's process loads the inbox's class too: Ray loads an actor's class wherever a handle to it is used
# (and on PostgreSQL the store actor's class, whose connections it uses instead of its own: no asyncpg).
AGENT_PROCESS = """
import sys
import actors.agent_actor, actors.inbox_actor, actors.agent_store_actor
print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'asyncpg', 'aiosqlite', 'greenlet', 'alembic'}))
"""


def test_an_agent_actors_process_loads_no_sqlalchemy_even_with_the_inbox_class_it_calls() -> None:
    done = subprocess.run([sys.executable, "-c", AGENT_PROCESS], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == ["[]"]


def test_actor_settings_carry_the_gateways_values(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", agent_connection_linger_s=0,
                        send_max_attempts=3, graph_url="http://127.0.0.1:9/v25.0/")
    copied = ActorSettings.from_settings(settings)
    assert copied.database_url == settings.database_url
    assert (copied.agent_connection_linger_s, copied.send_max_attempts) == (0, 3)
    assert copied.graph_base_url == "http://127.0.0.1:9/v25.0"
    assert copied.secret_key_file == settings.secret_key_file and copied.secret_key_file.is_absolute()
    assert ActorSettings.from_settings(copied) is copied

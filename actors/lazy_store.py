"""The store's SQLAlchemy modules, loaded where they are first used rather than where they are imported.

Ray loads an actor's class in every process that holds a handle to it: an agent actor that calls its
inboxes loads `actors.inbox_actor`. The store modules behind an inbox (SQLAlchemy, its ORM, the mapped
tables: ~26 MiB) are needed only where an inbox runs, so its module imports them lazily (importlib's
`LazyLoader`): an agent actor's process never loads them (tests/test_actor_imports.py).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """Module `name`, executed at its first attribute access (at once if it is already loaded)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module

"""Where sender actors find the encryption key: a file, never an argument or an environment variable.

With a key file (the default) they read that file. With the key given as `WA_ROUTER_SECRET_KEY`, the
gateway keeps it out of Ray's processes' environment (`actors.ray_connection.connect_ray`) and hands it to
the senders on this machine as a credential file: 0600, in a private directory of its own, removed when
the gateway stops. On a multi-node cluster, senders on other nodes read `WA_ROUTER_SECRET_KEY` set there
by the operator, or the key file at the same path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from config.settings import Settings


class KeyHandoff:
    def __init__(self, settings: Settings) -> None:
        self._directory: Path | None = None
        self.key_file: Path = settings.secret_key_file
        if settings.secret_key:
            self._directory = Path(tempfile.mkdtemp(prefix="wa-router-key-"))  # mode 0700
            self.key_file = self._directory / "secret.key"
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(settings.secret_key.encode())

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

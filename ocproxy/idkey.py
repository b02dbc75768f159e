"""Where the key that pseudonymises driver identifiers comes from.

Order: the config file's ``id_key``, then ``$OCPROXY_ID_KEY``, then a random key
created once per user in ``$XDG_CONFIG_HOME/ocproxy/id-key`` (mode 0600), so that
pseudonyms stay the same across runs and recordings without any set-up step.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ocproxy.errors import ConfigError

ENV_VAR = "OCPROXY_ID_KEY"


def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ocproxy" / "id-key"


def resolve_id_key(configured: str | None) -> bytes:
    if configured:
        return configured.encode()
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return from_env.encode()
    path = key_file()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        return path.read_text().strip().encode()
    except FileExistsError:  # another process created it first
        return path.read_text().strip().encode()
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the id key {path}: {exc.strerror}; "
            f"set {ENV_VAR} or id_key in --config, or pass --keep-ids"
        ) from exc

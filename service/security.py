"""The admin key's rules: never the well-known default off loopback; `make up` makes its own.

`OSPO_ADMIN_API_KEY` defaults to `change-me` so that tests and a first local run need no setup.
Bound to loopback that is harmless; bound to anything else it would open `/admin` (promote,
train, catalogue writes) to whoever reads the README, so `ospo serve`/`ospo up` refuse it, like
any key shorter than `MIN_KEY_LENGTH` or the production example's placeholder.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from service.settings import Settings, get_settings

DEFAULT_KEY = "change-me"
PLACEHOLDERS = {DEFAULT_KEY, "replace-with-a-long-random-secret"}  # .env examples
MIN_KEY_LENGTH = 16
KEY_FILE = "admin.key"


class WeakAdminKey(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_admin_key(settings: Settings, host: str) -> None:
    """Raise `WeakAdminKey` when the API would listen beyond loopback with a guessable key."""
    key = settings.admin_api_key.get_secret_value()
    if is_loopback(host) or (key not in PLACEHOLDERS and len(key) >= MIN_KEY_LENGTH):
        return
    raise WeakAdminKey(
        f"refusing to listen on {host} with "
        + ("the well-known default admin key" if key in PLACEHOLDERS else "a short admin key")
        + f": set OSPO_ADMIN_API_KEY to a random secret of {MIN_KEY_LENGTH}+ characters "
        "(`make up` generates one under the data folder), or bind to 127.0.0.1"
    )


def ensure_admin_key(settings: Settings) -> Path | None:
    """When no key is configured, use the one stored under `data_dir` (made once, mode 0600)
    and export it, so every process `ospo up` starts shares it. Returns the file, or None when
    a key was configured."""
    if "OSPO_ADMIN_API_KEY" in os.environ or settings.admin_api_key.get_secret_value() not in (
        PLACEHOLDERS
    ):
        return None
    path = settings.data_dir / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    os.environ["OSPO_ADMIN_API_KEY"] = path.read_text().strip()
    get_settings.cache_clear()
    return path

"""Who may connect: the bind address rule and the access token.

The app binds 127.0.0.1 by default. Any other address needs ``--allow-remote`` and a token, taken from
the environment variable ``SCISEG_REVIEW_TOKEN`` or generated (printed once at start). Every browser
connection must present it: the page passes the ``secret`` query parameter of its URL in wslink's
hello, and wslink refuses the websocket (no state, no call) when it differs (see ``app.serve``).
"""

from __future__ import annotations

import ipaddress
import os
import secrets

from ..errors import InputError

TOKEN_ENVIRONMENT = "SCISEG_REVIEW_TOKEN"
MIN_TOKEN_CHARACTERS = 16


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, allow_remote: bool, environment: dict[str, str] | None = None) -> tuple[str | None, bool]:
    """(token, generated) for a bind address; (None, False) on loopback without --allow-remote.

    Raises :class:`InputError` for a non-loopback address without ``--allow-remote`` or a too short token.
    """
    environment = os.environ if environment is None else environment
    if not allow_remote:
        if not is_loopback(host):
            raise InputError(f"listening on {host} exposes the dataset to the network; add --allow-remote (a token is then required).")
        return None, False
    token = environment.get(TOKEN_ENVIRONMENT, "")
    if token:
        if len(token) < MIN_TOKEN_CHARACTERS:
            raise InputError(f"{TOKEN_ENVIRONMENT} is shorter than {MIN_TOKEN_CHARACTERS} characters; use a longer random token.")
        return token, False
    return secrets.token_urlsafe(24), True

"""Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def sign(body: bytes, app_secret: str) -> str:
    """The header value Meta sends for `body` signed with `app_secret`."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def verify(body: bytes, header_value: str, app_secret: str) -> bool:
    """Constant-time check of a header value against the body and secret."""
    # compare_digest refuses non-ASCII str; such a header cannot be a valid signature anyway.
    if not header_value.isascii() or not header_value.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(body, app_secret), header_value.strip())

"""Credentials out of anything a scan records or prints.

Passwords travel inside URLs (``postgresql://user:PASSWORD@host/db``, a Pushgateway
behind basic auth) and those URLs end up in run records, summaries and warnings. Every
such place passes its text through ``redact``; storage options are never recorded.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@  ->  scheme://user:***@   (userinfo ends at the last '@'
# before the host; a password may itself hold ':' and '@' when not percent-encoded)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s:@]*:)[^/?#\s]*@")
# ?password=...&token=... in a URL's query or a DSN's key=value pairs
_SECRET_PARAM = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|access_token|api_key|apikey|"
    r"x-amz-signature|x-amz-security-token|sig)=)[^&\s;]+",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with URL passwords and secret-looking parameters masked."""
    text = _USERINFO.sub(lambda m: m.group("head") + MASK + "@", text)
    return _SECRET_PARAM.sub(lambda m: m.group("key") + MASK, text)


def redact_values(value: Any) -> Any:
    """Every string inside nested dicts, lists and tuples redacted (a config as a dict)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_values(v) for v in value)
    return value

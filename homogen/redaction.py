"""Credentials out of URLs, the one scrubber every layer uses before showing or storing a location.

:func:`redact` takes a URL, a plain path or any text (an error message, a config value): in every
``scheme://...`` URL it finds, it drops the ``user:password@`` (or lone ``token@``) part and the
whole query string and fragment (pre-signed URLs carry their signature there). Plain paths,
Windows paths and text without URLs come back unchanged.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not a URL after all (e.g. a bad port): drop everything up to the host
        return re.sub(r"://[^/@]*@", "://", url).split("?", 1)[0].split("#", 1)[0]
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if not host and not parts.netloc:  # scheme:///path (file, sqlite): keep the empty authority
        return f"{parts.scheme}://{parts.path}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact(text: Any) -> Any:
    """``text`` with credentials, query strings and fragments removed from every URL in it.

    Non-strings are returned unchanged.

    >>> redact("s3://AKIA:s3cr3t@bucket/ds.zarr")
    's3://bucket/ds.zarr'
    >>> redact("failed for https://u:p@host:5000/x?X-Amz-Signature=abc and gs://k:v@bkt/y")
    'failed for https://host:5000/x and gs://bkt/y'
    >>> redact("/data/user@host/ds.zarr")
    '/data/user@host/ds.zarr'
    """
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL.sub(lambda m: _redact_url(m.group(0)), text)

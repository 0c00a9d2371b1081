"""Credentials out of URLs, the one scrubber every layer uses before showing or storing a location.

:func:`redact` takes a URL, a plain path or any text (an error message, a config value): in every
``scheme://...`` URL it finds, it drops the ``user:password@`` (or lone ``token@``) part and the
whole query string and fragment (pre-signed URLs carry their signature there). A query string
without a scheme before it (``a.jpg?X-Amz-Signature=...``, a path joined to a signed name) is
dropped too when it names a credential (signature, token, key, credential, password, secret).
Plain paths, Windows paths and text without URLs come back unchanged.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_SIGNED_QUERY = re.compile(
    r"\?[^\s'\"<>?#]*(?:signature|sig=|token|credential|key=|password|secret|x-amz-|x-goog-)[^\s'\"<>]*", re.I
)


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
    >>> redact("cannot read /coco/train2017/a.jpg?X-Amz-Signature=abc&X-Amz-Credential=AKIA (denied)")
    'cannot read /coco/train2017/a.jpg (denied)'
    >>> redact("what?")
    'what?'
    """
    if not isinstance(text, str):
        return text
    if "://" in text:
        text = _URL.sub(lambda m: _redact_url(m.group(0)), text)
    return _SIGNED_QUERY.sub("", text) if "?" in text else text

"""Which input URIs a scan may read: configured prefixes, checked before any access.

A manifest is data, and data can be hostile: an entry may point at another bucket, at
``http://169.254.169.254/`` (a cloud metadata endpoint), at ``/etc/shadow`` through a
symlink or a ``..`` segment, or chain fsspec protocols (``zip://...::s3://...``). Every
listed URI is checked here before it is stat'ed, hashed or decoded; a refused one is
never opened and ends as an ``unsupported`` row that says why.

Local paths are compared after ``os.path.realpath`` (``..`` and symlinks resolved).
Remote keys are compared both as written and with dot segments removed (and
percent-decoded), and must pass both ways: S3 treats ``a/../b`` as a literal key, an
HTTP server may not. A prefix matches whole path segments: ``s3://b/in`` allows
``s3://b/in/x.mp4``, not ``s3://b/in-private/x.mp4``.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from dataclasses import dataclass

LOCAL_SCHEMES = ("file", "local")
ANY_LOCAL = "file:///"


def _split(uri: str) -> tuple[str, str]:
    """(scheme, rest); a bare path is ``file``."""
    if "://" not in uri:
        return "file", uri
    scheme, _, rest = uri.partition("://")
    return scheme.lower(), rest


def canonical_prefix(prefix: str) -> str:
    """A configured prefix in the form URIs are compared in."""
    scheme, rest = _split(prefix.strip())
    if scheme in LOCAL_SCHEMES:
        if rest in ("", "/"):
            return ANY_LOCAL
        return "file://" + os.path.realpath(os.path.expanduser(rest))
    return f"{scheme}://{rest}"


def _forms(uri: str) -> list[str]:
    """Every reading of ``uri`` that must be allowed for it to be allowed."""
    scheme, rest = _split(uri)
    if scheme in LOCAL_SCHEMES:
        return ["file://" + os.path.realpath(rest)]
    forms = [f"{scheme}://{rest}"]
    for text in (rest, urllib.parse.unquote(rest)):
        norm = posixpath.normpath(text) if text else text
        forms.append(f"{scheme}://{norm}")
    return forms


def _under(uri: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        # The folder itself too: its normalised reading has lost the trailing slash.
        return uri.startswith(prefix) or uri == prefix.rstrip("/")
    return uri == prefix or uri.startswith(prefix + "/")


@dataclass(frozen=True)
class UriPolicy:
    """Allowed prefixes, canonical. Empty: everything is allowed (library default)."""

    prefixes: tuple[str, ...] = ()

    @classmethod
    def build(cls, prefixes: tuple[str, ...] | list[str]) -> UriPolicy:
        return cls(tuple(canonical_prefix(p) for p in prefixes))

    def refusal(self, uri: str) -> str | None:
        """Why ``uri`` may not be read, or None when it may."""
        if not self.prefixes:
            return None
        if "::" in uri:
            return "chained fsspec URLs (::) are not allowed as inputs"
        if all(any(_under(form, p) for p in self.prefixes) for form in _forms(uri)):
            return None
        return "outside the allowed input prefixes (--allow-prefix): not read"

    def allows(self, uri: str) -> bool:
        return self.refusal(uri) is None


def default_prefixes(input_uri: str, is_manifest: bool) -> tuple[str, ...]:
    """Any local file, plus the given input: its prefix, or for a manifest, its bucket
    (platform manifests list uploads beside them, rarely under the manifest's folder)."""
    scheme, rest = _split(input_uri)
    if scheme in LOCAL_SCHEMES:
        return (ANY_LOCAL,)
    if is_manifest:
        bucket = rest.split("/", 1)[0]
        return (ANY_LOCAL, f"{scheme}://{bucket}/")
    return (ANY_LOCAL, f"{scheme}://{rest}")

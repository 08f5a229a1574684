"""The version nfguard reports (metrics' build_info, audit events' observer.version)."""

from __future__ import annotations

import functools
import importlib.metadata

from nfguard import __version__


@functools.cache
def version() -> str:
    """The installed distribution's version (what pip or the package installed); the
    source's own when nfguard runs from a checkout that was never installed."""
    try:
        return importlib.metadata.version("nfguard")
    except importlib.metadata.PackageNotFoundError:
        return __version__

"""The installed roomhub's version (package metadata): ``chat_build_info`` and the pages'
footers show it."""

from __future__ import annotations

from importlib.metadata import version

VERSION = version("roomhub")

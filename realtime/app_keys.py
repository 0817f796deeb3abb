"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from .node import Node

NODE = web.AppKey("node", Node)

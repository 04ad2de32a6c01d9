"""The permission names of access control, shared by the node and dynctl.

An op is one of OPS; a shorthand stands for several. ``all`` is every data op: ``admin``
is never implied by a shorthand, it must be named (and only on bucket ``*``).
"""

from __future__ import annotations

OPS = ("get", "put", "delete", "query", "admin")
SHORTHANDS = {"read": ("get", "query"), "write": ("put", "delete"),
              "readwrite": ("get", "put", "delete", "query"),
              "all": ("get", "put", "delete", "query")}
PERM_NAMES = OPS + tuple(SHORTHANDS)

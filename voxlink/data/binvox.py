"""Moved to the runtime core: :mod:`voxlink.binvox` (kept here so old imports work)."""

from voxlink.binvox import BinvoxError, read_binvox, write_binvox  # noqa: F401

"""Helpers for the regcache end-to-end suite (see ../README.md)."""

"""Test-only helpers: data writers, process launching, multi-process workers."""

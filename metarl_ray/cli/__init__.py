"""The ``metarl`` command."""

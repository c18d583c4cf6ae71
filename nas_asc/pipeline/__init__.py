"""The stages put together: each command's work as a function over a typed request, which the
CLI only builds (from its arguments) and prints the outcome of. :mod:`~nas_asc.pipeline.search`
is ``nas-asc search``."""

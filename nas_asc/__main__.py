"""``python -m nas_asc``: the ``nas-asc`` command line."""

from nas_asc.cli import main

if __name__ == "__main__":  # worker processes (spawn) import this module without running it
    raise SystemExit(main())

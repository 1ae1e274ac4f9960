"""A module that fails while being imported (the python tool must report it at start)."""

raise RuntimeError("broken on import")

"""The seamless tile modes (which image axes wrap around), in a module of their own so `imaginairy.schema` can
read them without importing torch."""

TILE_MODES = ("", "x", "y", "xy")

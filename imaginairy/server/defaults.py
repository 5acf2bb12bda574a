"""The server's defaults, in a module light enough for the CLI to import at start-up."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_MAX_QUEUE = 16
VRAM_MODES = ("high", "mid", "low")
TOKEN_ENV = "IMAGINAIRY_SERVER_TOKEN"

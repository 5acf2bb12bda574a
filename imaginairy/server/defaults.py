"""The server's defaults, in a module light enough for the CLI to import at start-up."""

from imaginairy.schema import MEMORY_MODES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_MAX_QUEUE = 16
# Each gRPC message, either way: a request's images, or one answer's PNG (with room for the answer around it).
MAX_MESSAGE_BYTES = 20 * 1024 * 1024
MAX_ANSWER_IMAGE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
TOKEN_ENV = "IMAGINAIRY_SERVER_TOKEN"
VRAM_MODES = MEMORY_MODES  # --vram-mode takes the library's memory modes

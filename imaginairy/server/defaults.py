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
DEFAULT_HTTP_PORT = 7860  # A1111's port, where its clients look first
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # one HTTP request: base64 images are 4/3 of their files
DEFAULT_PREVIEW_EVERY = 2  # sampler steps between two live previews; 0: none

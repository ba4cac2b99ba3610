"""The web app's defaults, in a module light enough for the CLI to read without importing Gradio."""

DEFAULT_HOST = "127.0.0.1"  # this machine only, unless told otherwise
DEFAULT_PORT = 7860
AUTH_ENV = "MMODAL_AUTH"
MAX_UPLOAD = "25mb"
MAX_RESULTS = 100
QUEUE_SIZE = 64  # requests waiting beyond this are refused instead of piling up in memory

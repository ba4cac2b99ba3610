"""The web app's defaults, in a module light enough for the CLI to read without importing Gradio."""

DEFAULT_HOST = "127.0.0.1"  # this machine only, unless told otherwise
DEFAULT_PORT = 7860
AUTH_ENV = "MMODAL_AUTH"
MAX_UPLOAD = "25mb"
MAX_RESULTS = 100
QUEUE_SIZE = 64  # requests waiting beyond this are refused instead of piling up in memory
# Each page and each API call without a session of its own holds about 90 KB of Gradio's state; the oldest go
# beyond this many, so a stream of one-off calls cannot grow the server without bound.
SESSION_CAPACITY = 1000
# Every upload and answer map is a file in Gradio's cache (thumbnails are not: they are drawn on request); files
# older than this go, so the cache holds about an hour of uploads.
CACHE_MAX_AGE_SECONDS = 3600
CACHE_SWEEP_SECONDS = 300

"""The web app's defaults, in a module light enough for the CLI to read without importing Gradio."""

DEFAULT_HOST = "127.0.0.1"  # this machine only, unless told otherwise
DEFAULT_PORT = 7860
AUTH_ENV = "MMODAL_AUTH"
MAX_UPLOAD = "25mb"
MAX_RESULTS = 100
QUEUE_SIZE = 64  # requests waiting beyond this are refused instead of piling up in memory
# Every thumbnail and upload is a file in Gradio's cache; files older than this go, so the cache holds about an
# hour of traffic instead of, over weeks, a copy of the whole collection.
CACHE_MAX_AGE_SECONDS = 3600
CACHE_SWEEP_SECONDS = 300

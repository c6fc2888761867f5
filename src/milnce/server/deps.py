"""The message for a missing ``serve`` extra (shared by the package and its runner)."""

MISSING_DEPS = "the web server needs FastAPI and uvicorn: pip install 'milnce[serve]'"

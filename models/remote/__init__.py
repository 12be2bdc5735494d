"""Models served by an inference engine elsewhere, reached over an OpenAI-compatible HTTP API."""

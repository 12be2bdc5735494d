"""The generation baseline: a plain script around `llama_cpp.Llama`, nothing of the node.

Run as `python -m benchmarks.raw_worker MODEL_PATH THREADS N_CTX`; it loads the
model once, then answers one JSON line per request line on stdin
(`{"prompt": str, "max_tokens": int}`) with the completion and its timings.
The call is the one a user of llama-cpp-python would write: the GGUF's chat
template through `create_chat_completion`, greedy (temperature 0), no repeat
penalty, the same threads and context as the node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import llama_cpp
from pydantic import BaseModel

from benchmarks.stats import BenchmarkError
from models.cpu import CpuInfo, extra_buffers_enabled
from models.llama_open import construct_llama


class RawReply(BaseModel):
    """One completion of the plain script, timed inside it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    prompt_seconds: float
    prompt_evaluated: int
    generation_seconds: float
    generation_evaluated: int


class RawWorker:
    """The plain script in a child process, model loaded once; `complete()` is blocking."""

    def __init__(self, model: Path, threads: int, n_ctx: int) -> None:
        self._args = [sys.executable, "-m", "benchmarks.raw_worker", str(model), str(threads), str(n_ctx)]
        self._proc: subprocess.Popen[str] | None = None
        self.startup_seconds = 0.0

    def __enter__(self) -> Self:
        started = time.perf_counter()
        self._proc = subprocess.Popen(
            self._args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        self._read_line()  # {"ready": true}
        self.startup_seconds = time.perf_counter() - started
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchmarkError("the raw llama_cpp script is not running")
        return self._proc.pid

    def complete(self, prompt: str, max_tokens: int) -> RawReply:
        if self._proc is None or self._proc.stdin is None:
            raise BenchmarkError("the raw llama_cpp script is not running")
        self._proc.stdin.write(json.dumps({"prompt": prompt, "max_tokens": max_tokens}) + "\n")
        self._proc.stdin.flush()
        return RawReply.model_validate_json(self._read_line())

    def _read_line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise BenchmarkError(f"the raw llama_cpp script exited (code {self._proc.poll()})")
        return line


def main(model_path: str, threads: int, n_ctx: int) -> None:
    llama = construct_llama(  # with the node's extra-buffer choice for this CPU (models/cpu.py)
        Path(model_path),
        extra_buffers=extra_buffers_enabled("auto", CpuInfo.read()),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        llama_cpp.llama_perf_context_reset(llama.ctx)
        started = time.perf_counter()
        out = llama.create_chat_completion(
            messages=[{"role": "user", "content": request["prompt"]}],
            max_tokens=request["max_tokens"],
            temperature=0.0,
            repeat_penalty=1.0,
        )
        seconds = time.perf_counter() - started
        perf = llama_cpp.llama_perf_context(llama.ctx)
        usage = out["usage"]  # type: ignore[index]
        reply = {
            "text": out["choices"][0]["message"]["content"],  # type: ignore[index]
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "seconds": seconds,
            "prompt_seconds": perf.t_p_eval_ms / 1000.0,
            "prompt_evaluated": perf.n_p_eval,
            "generation_seconds": perf.t_eval_ms / 1000.0,
            "generation_evaluated": perf.n_eval,
        }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

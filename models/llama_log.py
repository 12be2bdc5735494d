"""Route llama.cpp's own log lines into structlog.

llama.cpp keeps ONE log callback for the whole process (`llama_log_set` writes
a C global), so this is necessarily process-wide: `install_llama_log_router()`
installs it once and is idempotent. The ctypes callback object must stay alive
as long as C may call it, so the router instance that owns it is kept on the
router class itself (the one place this module holds state, forced by the C API).

llama.cpp emits a line in pieces (level CONT continues the previous piece, and
progress dots arrive without a newline), so text is buffered per thread until a
newline. Its DEBUG lines (graph dumps, thousands per load) are dropped; its INFO
level is load-time chatter (dozens of lines per model), so it is logged at
debug; WARN and ERROR keep their levels. The last ERROR line of a thread is kept
until `take_first_error()` reads it, so that a failed call can say why (llama.cpp's
own functions return only NULL).
"""

from __future__ import annotations

import ctypes
import threading
from typing import ClassVar

import llama_cpp
import structlog

log = structlog.get_logger("llama.cpp")

# enum ggml_log_level (ggml.h of this build): NONE=0, DEBUG=1, INFO=2, WARN=3,
# ERROR=4, CONT=5. (llama_cpp/_logger.py still documents an older numbering.)
_DEBUG, _ERROR, _CONT = 1, 4, 5
_LEVEL_NAMES = {0: "debug", 2: "debug", 3: "warning", 4: "error"}
# The runtime's vocab-only tokenizer context (no weights, so no training context)
# makes llama.cpp warn about it on every load; it means nothing there.
_KNOWN_HARMLESS = "> n_ctx_train (0)"
_DEBUG_VISIBLE = 2


class LlamaLogRouter:
    """Owns the ctypes callback that forwards llama.cpp log text to structlog."""

    _installed: ClassVar[LlamaLogRouter | None] = None
    _install_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._pending = threading.local()
        # Keep a reference: C holds only a raw function pointer.
        self.callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        # An exception must never escape into C (ctypes would just print it).
        try:
            self._append(level, text.decode("utf-8", errors="replace"))
        except Exception:  # noqa: BLE001, S110 - nowhere safe to report it from a C callback
            pass

    def _append(self, level: int, piece: str) -> None:
        state = self._pending
        if not hasattr(state, "text"):
            state.text, state.level = "", 1
        if level != _CONT and not state.text:
            state.level = level
        state.text += piece
        while "\n" in state.text:
            line, state.text = state.text.split("\n", 1)
            if line.strip():
                if state.level == _ERROR and getattr(state, "error", None) is None:
                    state.error = line.strip()  # the first says why; the ones after say that it failed
                self._emit(state.level, line.rstrip())

    @staticmethod
    def _emit(level: int, line: str) -> None:
        if level == _DEBUG:
            return
        if _KNOWN_HARMLESS in line:
            level = _DEBUG_VISIBLE
        method = getattr(log, _LEVEL_NAMES.get(level, "debug"))
        method("llama_cpp", line=line)


def take_first_error() -> str | None:
    """The first ERROR line llama.cpp logged on this thread since the last call, or None."""
    router = LlamaLogRouter._installed
    if router is None:
        return None
    error: str | None = getattr(router._pending, "error", None)
    router._pending.error = None
    return error


def install_llama_log_router() -> LlamaLogRouter:
    """Install the process-wide llama.cpp log callback (once; later calls return it)."""
    with LlamaLogRouter._install_lock:
        if LlamaLogRouter._installed is None:
            router = LlamaLogRouter()
            llama_cpp.llama_log_set(router.callback, ctypes.c_void_p(0))
            LlamaLogRouter._installed = router
        return LlamaLogRouter._installed

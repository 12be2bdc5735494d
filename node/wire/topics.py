"""Protocol constants: topic names, model wildcards, version, size limits, the deterministic-error prefix,
the direct-delivery stream protocol.

Every module that names a topic, checks the version or bounds a gossip message
imports it from here.
"""

PROTOCOL_NAME = "dria"
PROTOCOL_VERSION = "0.3.0"
MAX_MESSAGE_BYTES = 256 * 1024  # one gossip message (a sealed envelope), bytes
# How long a relaying peer remembers a gossip message it has seen, seconds: longer than any
# envelope is accepted (envelope.py: 10 min old, 1 min ahead). A copy delayed past a shorter
# window (a starved peer's socket buffers) would pass as new and be flooded again, more
# traffic that delays the next copies further.
SEEN_WINDOW_S = 12 * 60

TASK_TOPIC = "task"
RESULTS_TOPIC = "results"
HEARTBEAT_TOPIC = "heartbeat"
TOPICS = (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)

# Model wildcards a task may list instead of (or besides) a model name.
ANY_LOCAL_MODEL = "llamacpp"  # provider name: every locally hosted GGUF model
ANY_MODEL = "*"
FIRST_MODEL = "!"

# An error result starting with this fails the same way on any node: publishers do not retry it.
# Every other error is transient (busy, interrupted, a model or engine failure, a deadline).
DETERMINISTIC_ERROR_PREFIX = "Invalid prompt: "
# In the error of an answer under a schema that max_tokens cut short (workflows/operators.py `generate`): the
# workflow's own max_tokens makes it deterministic, but another model or a sampled run may fit where one did not.
CUT_SHORT_MARK = "(max_tokens reached"
# In the error of a task whose prompt and max_tokens cannot fit the model's context (workflows/operators.py).
CONTEXT_OVERFLOW_MARK = "does not fit the model's context"
# Transient errors a node's ledger and a publisher tell apart by their start: no capacity now, and a run that
# was cut off (a shutdown, a restart of the node or of its execution process). These prefixes and marks are
# read in one place, node/wire/error_kinds.py (ErrorKind, ErrorLimit).
BUSY_PREFIX = "busy: "
INTERRUPTED_PREFIX = "interrupted: "

# Direct delivery (protocol 0.4, PROTOCOL.md section 8): a stream per task, frames of varint length + JSON.
DIRECT_PROTOCOL = "/compute/task/0.4.0"
MAX_FRAME_BYTES = 256 * 1024  # one frame's JSON, bytes
MAX_HEARTBEAT_ADDRS = 8
MAX_ADDR_CHARS = 256

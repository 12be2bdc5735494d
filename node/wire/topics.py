"""Protocol constants: topic names, model wildcards, version, size limit.

Every module that names a topic, checks the version or bounds a gossip message
imports it from here.
"""

PROTOCOL_NAME = "dria"
PROTOCOL_VERSION = "0.3.0"
MAX_MESSAGE_BYTES = 256 * 1024  # one gossip message (a sealed envelope), bytes

TASK_TOPIC = "task"
RESULTS_TOPIC = "results"
HEARTBEAT_TOPIC = "heartbeat"
TOPICS = (TASK_TOPIC, RESULTS_TOPIC, HEARTBEAT_TOPIC)

# Model wildcards a task may list instead of (or besides) a model name.
ANY_LOCAL_MODEL = "llamacpp"  # provider name: every locally hosted GGUF model
ANY_MODEL = "*"
FIRST_MODEL = "!"

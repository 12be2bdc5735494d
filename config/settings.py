"""The node's settings: defaults < TOML file < environment (COMPUTE_NODE_*) < CLI flags.

Every setting is one flat field, so the same name works everywhere: the TOML key
`max_queue`, the variable `COMPUTE_NODE_MAX_QUEUE` and the flag `--max-queue`.
List settings accept a JSON array or a comma-separated string in the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from config.layered import ConfigError, LayeredSettings, MultiaddrList, PeerAddrList, Seconds, StrList, UserPath

__all__ = ["ConfigError", "Settings", "StrList"]

ENV_PREFIX = "COMPUTE_NODE_"
DEFAULT_MODEL = "smollm2:135m"


class Settings(LayeredSettings):
    """Everything an operator can set. See config/example.toml for a commented file."""

    # No infinities: `drain_timeout = inf` would wait forever.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, allow_inf_nan=False)
    singular_flags: ClassVar[dict[str, str]] = {"models": "model", "publishers": "publisher"}
    # The gateway's settings, the installer's wheel cache and the tests' hooks share the prefix.
    foreign_env: ClassVar[tuple[str, ...]] = (
        f"{ENV_PREFIX}GATEWAY_",
        f"{ENV_PREFIX}WHEEL_CACHE",
        f"{ENV_PREFIX}TEST_",
        f"{ENV_PREFIX}SDK_VENV",
    )
    secret_settings: ClassVar[dict[str, str | None]] = {
        "secret_key": "secret_key_file",
        "search_api_key": None,
        "tool_secrets": None,
    }
    auto_defaults: ClassVar[frozenset[str]] = frozenset(
        {"n_threads", "n_gpu_layers", "parallel", "max_concurrent", "exec_address_space_mb", "exec_max_rss_mb"}
    )

    # Identity and storage
    data_dir: UserPath = Field(default=Path("~/.compute-node"), description="Key, journal and models live here")
    secret_key: str | None = Field(default=None, description="Node secret key (hex); default: <data_dir>/identity.key")
    secret_key_file: UserPath | None = Field(
        default=None, description="File holding the node secret key (hex), read at start (never created)"
    )

    # Network
    listen: MultiaddrList = Field(default=["/ip4/0.0.0.0/tcp/4001"], min_length=1, description="Listen multiaddrs")
    bootstrap: PeerAddrList = Field(
        default=[],
        description="Peers dialled at start (/ip4/../tcp/../p2p/.., or /dns4/<name>/...: names as the system resolves them)",
    )
    direct: bool = Field(default=True, description="Take tasks on direct-delivery streams and advertise addrs (0.4)")
    announce: MultiaddrList = Field(
        default=[], description="Addresses heartbeats advertise for direct delivery (default: listen, 0.0.0.0 expanded)"
    )
    direct_streams_max: int = Field(default=256, ge=1, description="Direct-delivery streams open at once")
    direct_streams_per_peer: int = Field(default=16, ge=1, description="Direct-delivery streams open per publisher")
    inbound_connections_per_ip: int = Field(
        default=8,
        ge=1,
        description="Inbound connections open at once from one IP (IPv6: one /56); more are closed before their handshake",
    )
    inbound_connections_per_ip_per_minute: int = Field(
        default=30, ge=1, description="New inbound connections one IP (IPv6: one /56) may open per minute"
    )
    direct_first_frame_timeout: Seconds = Field(
        default=10.0, gt=0, description="Seconds a new direct-delivery stream has to send its task"
    )
    heartbeat_interval: Seconds = Field(default=30.0, gt=0, description="Seconds between heartbeats")
    redial_max_backoff: Seconds = Field(default=60.0, gt=0, description="Longest wait between bootstrap re-dials")
    publishers: StrList = Field(default=[], description="If set, only tasks signed by these addresses are accepted")
    reject_log_window: Seconds = Field(
        default=10.0, ge=0, description="Seconds between log lines for one rejection reason (0: log every one)"
    )

    # Models and runtime
    models: StrList = Field(default=[DEFAULT_MODEL], min_length=1, description="Models to host")
    registry: dict[str, dict[str, Any]] = Field(
        default={},
        description="Registry entries beside (or over) the built-in models; from the environment or a flag they "
        "replace the file's, as every setting does",
    )
    n_ctx: int = Field(
        default=2048,
        ge=256,
        le=1 << 20,
        description="Context window of each slot (at most the model's trained context)",
    )
    n_threads: int | None = Field(
        default=None, ge=1, le=4096, description="Threads per model (default: cores available)"
    )
    n_gpu_layers: int | None = Field(
        default=None, ge=-1, description="Layers offloaded to GPU (default: all if GPU build)"
    )
    flash_attn: Literal["on", "off", "auto"] = Field(
        default="auto",
        description="Flash attention; auto: on with a GPU or a quantized KV cache (which needs it), off on a CPU "
        "with an f16 cache (decoding at long contexts measured up to 2x faster without it)",
    )
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(
        default="f16", description="Type of the KV cache (K and V); see benchmark 10 for memory, speed and quality"
    )
    extra_buffers: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="llama.cpp extra buffer types (AMX, weight repacking); auto: on, except on an AMX CPU whose "
        "llama.cpp library holds an unpatched AMX kernel (models/cpu.py)",
    )
    verify_precision: Literal["auto", "model", "bf16"] = Field(
        default="auto",
        description="Weights that re-score results here (run-task --verify): the model file, or a bf16 copy of it "
        "(~3x faster re-scoring); auto: bf16 where CPU and llama.cpp build have AVX512_BF16 and the file is <= 1 GiB, "
        "unless llama.cpp's AMX kernels multiply the file there",
    )
    parallel: int | None = Field(
        default=None, ge=1, le=256, description="Sequences decoded together per model (default 4 on CPU, 8 on GPU)"
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, le=1024, description="Tasks running at once per model (default: parallel)"
    )
    max_queue: int = Field(default=8, ge=0, le=4096, description="Tasks waiting per model before 'busy'")
    temperature: float = Field(default=0.0, ge=0.0, le=5.0, description="Sampling temperature of generations")
    embedding_model: str | None = Field(default=None, description="Model for embeddings (default: the task's model)")
    startup_benchmark: bool = Field(
        default=True,
        description=(
            "Measure tokens/s of each model at start (cached); a node of one model measures its first start "
            "after READY, while idle (not with min_tps or idle_only)"
        ),
    )
    remote_health_interval: Seconds = Field(
        default=15.0, gt=0, description='Seconds between health checks of remote engines (registry backend = "openai")'
    )
    min_tps: float = Field(default=0.0, ge=0.0, description="Drop models slower than this many tokens/s (0: off)")
    max_tokens_cap: int = Field(default=4096, ge=1, description="Largest max_tokens a workflow may ask for")
    max_time_cap: Seconds = Field(default=3600.0, gt=0, description="Largest max_time (s) a workflow may ask for")
    max_steps_cap: int = Field(default=1000, ge=1, description="Largest max_steps a workflow may ask for")
    max_task_tokens: int = Field(default=32768, ge=1, description="Tokens all generations of one task may produce")
    max_memory_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Bytes one task may hold in its workflow memory"
    )
    max_result_bytes: int = Field(
        default=64 * 1024, ge=1, le=96 * 1024, description="Largest result (UTF-8 bytes); larger is an error result"
    )

    # Workflow tools
    search_provider: Literal["searxng", "serper"] | None = Field(default=None, description="Web search provider")
    search_url: str | None = Field(default=None, description="Search provider URL")
    search_api_key: str | None = Field(default=None, description="Search provider API key (sent only to search_url)")
    tool_allow: StrList = Field(default=[], description="Hosts/CIDRs tools may reach despite egress rules")
    tool_timeout: Seconds = Field(default=10.0, gt=0, description="Seconds per tool HTTP request")
    tool_max_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        le=8 * 1024 * 1024,
        description="Largest tool response, counted as received (before decompression) and after (at most 8 MiB)",
    )
    tool_arg_max_length: int = Field(
        default=200,
        ge=1,
        description="Longest string the model may write in a tool call's arguments (small models loop in a free string)",
    )
    tool_secrets: dict[str, dict[str, str]] = Field(
        default={},
        description="Headers sent only over https to the named host and port (443 unless given), and path "
        'when the key names one, e.g. {"api.x.com": {"Authorization": "..."}}; keys: host, host:port, '
        "https://host[:port] or https://host[:port]/path (that path and beneath it), optionally after methods "
        '("GET,POST https://api.x.com/v1")',
    )

    # Operations
    rerun_interrupted: bool = Field(default=False, description="Re-run tasks a crash interrupted, if time allows")
    result_grace: Seconds = Field(
        default=300.0, ge=0, description="Seconds past a deadline a kept result is still sent"
    )
    journal_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of finished results the journal keeps while they wait for peers; past it the oldest "
        "waiting result is dropped (tasks are never refused for room)",
    )
    journal_max_records: int = Field(
        default=100_000,
        ge=1000,
        description="Tasks remembered until their deadline to ignore a re-delivery (id, deadline and ledger row, no body); "
        "past it the earliest deadlines are forgotten first",
    )
    journal_retention: float | None = Field(
        default=None, gt=0, description="Deprecated, ignored: an entry goes at its deadline plus result_grace"
    )
    journal_publisher_max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Deprecated, ignored: keys are free, so a quota per publisher bounds nothing",
    )
    deadline_horizon: Seconds = Field(
        default=3600.0, gt=0, description="Seconds ahead a task's deadline may lie for this node to accept it"
    )
    exec_start_timeout: Seconds = Field(
        default=600.0, gt=0, description="Seconds a model's execution process gets to load, benchmark and answer"
    )
    exec_cancel_grace: Seconds = Field(
        default=5.0, gt=0, description="Seconds a task gets to stop after cancel before its execution process is killed"
    )
    exec_stall_timeout: Seconds = Field(
        default=5.0,
        gt=0,
        description="Seconds a model's decode loop may sit in one sampling call before its execution process is "
        "killed (a batch decode gets 4x its expected time on top)",
    )
    exec_address_space_mb: int | None = Field(
        default=None,
        ge=0,
        le=1 << 30,  # 1 EiB: past any machine, and within what RLIMIT_AS holds in bytes
        description="Address-space limit (RLIMIT_AS, MiB) of each execution process, CPU only "
        "(auto: its address space once loaded + its RSS limit + room for threads; none with GPU offload; 0: off)",
    )
    exec_max_rss_mb: int | None = Field(
        default=None,
        ge=0,
        le=1 << 30,
        description="Resident memory (MiB) past which an execution process is killed and restarted (auto: "
        "1.25 x (model file x 2 + KV cache of n_ctx x (parallel + 1), or for a remote engine its answers in flight "
        "at 4 x 16 MiB each) + 512, + 1024 with GPU offload; 0: off)",
    )
    exec_scratch_mb: int = Field(
        default=256,
        ge=1,
        le=1 << 30,
        description="Disk space (MiB) an execution process may fill in its scratch folder (its only writable one, "
        "in <data_dir>/scratch, removed when it ends) and the largest file it may write; past it, or past 1024 "
        "files, it is killed and restarted",
    )
    exec_env_pass: StrList = Field(
        default=[],
        description="Environment variables an execution process gets beside the system's, Python's and the "
        "runtimes' (names; NAME* takes a prefix); by default no other reaches it",
    )
    sandbox: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Confine each execution process (Linux Landlock): no access to the data dir's key, journal "
        "and ledger, the key or config file, nor to the daemon's memory or signals; auto: where the kernel has "
        "Landlock (a warning where not), on: a model whose process cannot be confined does not serve",
    )
    exec_crash_limit: int = Field(
        default=3, ge=1, description="Crashes within exec_crash_window that take a model out of the heartbeats"
    )
    exec_crash_window: Seconds = Field(default=300.0, gt=0, description="Seconds over which exec_crash_limit counts")
    ledger_days: float = Field(default=30.0, gt=0, le=10_000, description="Days the ledger keeps a finished task's row")
    ledger_max_rows: int = Field(
        default=200_000,
        ge=1000,
        le=2**62,
        description="Rows the ledger keeps at most (the oldest go first), whoever sent them",
    )
    idle_only: bool = Field(
        default=False, description="Pause by itself while other processes keep the machine busy; resume when they stop"
    )
    idle_cpu_threshold: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="idle_only: pause while other processes use more than this share of all CPUs",
    )
    idle_gpu_threshold: float = Field(
        default=0.10,
        gt=0,
        le=1,
        description="idle_only: pause while other processes keep a GPU busier than this (where nvidia-smi exists)",
    )
    idle_check_interval: Seconds = Field(
        default=5.0, gt=0, description="idle_only: seconds over which the machine's load is measured"
    )
    drain_timeout: Seconds = Field(default=30.0, ge=0, description="Seconds running tasks get to finish on shutdown")
    startup_grace: Seconds = Field(
        default=60.0, ge=0, description="Seconds /healthz stays healthy with no peers after start"
    )
    http_enabled: bool = Field(default=True, description="Serve the status page (/), /metrics, /healthz and /status")
    http_host: str = Field(default="127.0.0.1", description="Metrics/health listen host")
    http_port: int = Field(default=9090, ge=0, le=65535, description="Metrics/health listen port")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level")
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="auto: console on a tty")

    @field_validator("secret_key")
    @classmethod
    def _secret_key_hex(cls, value: str | None) -> str | None:
        text = None if value is None else value.strip().removeprefix("0x").removeprefix("0X")
        if text is not None and (len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text)):
            raise ValueError("must be 64 hex characters (with or without 0x); it is not shown here")
        return value

    @field_validator("announce")
    @classmethod
    def _announce_ips(cls, value: list[str]) -> list[str]:
        """Publishers dial heartbeat addrs by IP only (a name in anyone's heartbeat would be theirs to resolve)."""
        for addr in value:
            if addr.split("/")[1] in ("dns", "dns4", "dns6", "dnsaddr"):
                raise ValueError(
                    f"{addr!r} names a host, and publishers do not resolve names from heartbeats: "
                    "give its /ip4/... or /ip6/... address"
                )
        return value

    @field_validator("publishers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        out = []
        for addr in value:
            hex_part = addr.lower().removeprefix("0x")
            if len(hex_part) != 40 or any(c not in "0123456789abcdef" for c in hex_part):
                raise ValueError(f"{addr!r} is not a 40-hex-character address")
            out.append(hex_part)
        return out

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _flash_attn_boolean(cls, value: object) -> object:
        """Older configs say `flash_attn = true`: booleans (and their spellings) mean on/off."""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return "on" if value.lower() in {"true", "1", "yes"} else "off"
        return value

    @model_validator(mode="after")
    def _search_provider_complete(self) -> Settings:
        """searxng has no public default (its queries went to Serper's API); serper needs its key."""
        if self.search_provider == "searxng" and not self.search_url:
            raise ValueError("search_provider searxng needs search_url (your SearXNG instance's base URL)")
        if self.search_provider == "serper" and not self.search_api_key:
            raise ValueError("search_provider serper needs search_api_key")
        if self.search_url is not None and not self.search_url.startswith(("http://", "https://")):
            raise ValueError(f"search_url {self.search_url!r} is not an http(s) URL")
        return self

    @model_validator(mode="after")
    def _key_file(self) -> Settings:
        self._secret_key_from_file()
        return self

    @model_validator(mode="after")
    def _quantized_kv_cache_needs_flash_attention(self) -> Settings:
        if self.kv_cache_type != "f16" and self.flash_attn == "off":
            raise ValueError(f"kv_cache_type {self.kv_cache_type} needs flash_attn on or auto (llama.cpp)")
        return self

    @field_validator("exec_address_space_mb", "exec_max_rss_mb")
    @classmethod
    def _off_or_workable(cls, value: int | None, info: ValidationInfo) -> int | None:
        floor = 256 if info.field_name == "exec_address_space_mb" else 64
        if value is not None and 0 < value < floor:
            raise ValueError(f"must be 0 (off) or at least {floor} MiB (no runtime loads in less)")
        return value

    @property
    def identity_path(self) -> Path:
        """The node's secret key file in data_dir."""
        return self.data_dir / "identity.key"

    @property
    def models_dir(self) -> Path:
        """Where downloaded model files are kept."""
        return self.data_dir / "models"

    @property
    def benchmark_cache_path(self) -> Path:
        """The models' measured speeds (startup benchmarks), cached per model file, build and threads: the
        daemon's (execution processes get its entries in `configure` and report what they measure)."""
        return self.data_dir / "speeds.json"

    @property
    def scratch_dir(self) -> Path:
        """Where each execution process gets its scratch folder (node/daemon/processes/scratch.py)."""
        return self.data_dir / "scratch"

    @property
    def remote_benchmark_cache_path(self) -> Path:
        """The speeds of remote engines that were down at start, which the daemon measures itself."""
        return self.data_dir / "remote_benchmarks.json"

    @property
    def journal_path(self) -> Path:
        """The task journal's SQLite file."""
        return self.data_dir / "journal.sqlite3"

    @property
    def ledger_path(self) -> Path:
        """The ledger's SQLite file (totals of the tasks run)."""
        return self.data_dir / "ledger.sqlite3"

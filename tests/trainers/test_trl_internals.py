"""The TRL versions the package is tested with, and the TRL internals it relies on."""

import importlib
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version


# Dependencies you can trust -----------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
# The TRL names trl_pro imports that are private or undocumented: they may change in any TRL minor release
TRL_INTERNALS = [
    ("trl.trainer.base_trainer", "_BaseTrainer"),
    ("trl.trainer.base_config", "_BaseConfig"),
    ("trl.cli.commands.base", "Command"),
    ("trl.cli.commands.base", "CommandContext"),
    ("trl.cli.accelerate_config", "resolve_accelerate_config_argument"),
    ("trl.kernels", "ChunkedLogProbFunction"),
    ("trl.trainer.utils", "maybe_gather_lm_head_ctx"),
    ("trl.trainer.utils", "create_model_from_path"),
    ("trl.trainer.utils", "global_then_local_main_first"),
    ("trl.data_utils", "common_prefix_length"),
]


def test_trl_pin_is_the_tested_minor_release_and_its_internals_exist():
    import trl

    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (declared,) = [r for r in requirements if Requirement(r).name == "trl"]
    trl_requirement = Requirement(declared)
    installed = Version(trl.__version__)
    assert installed in trl_requirement.specifier
    # The pin admits only the minor release the suite runs on: TRL internals are not a stable API
    next_minor = Version(f"{installed.major}.{installed.minor + 1}.0")
    assert next_minor not in trl_requirement.specifier, trl_requirement
    for module, name in TRL_INTERNALS:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    # `trl.data_utils._tokenize` is no longer used: the tokenizer's own call / chat template are public
    assert not any("_tokenize" in path.read_text() for path in (REPO / "trl_pro" / "data").glob("*.py"))
    install = (REPO / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    assert f"Supported TRL versions: `{declared}`" in install

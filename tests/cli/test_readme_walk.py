"""README's pipeline walk (reward -> generate -> rank -> compare -> eval -> judge) runs as written, offline, on the
embedded defaults: the test runs README's own commands, at smaller sizes and into a temporary folder."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
# Each command's size, smaller than README's: same flags, so README cannot drift from what runs
SMALLER = {
    "reward": ["--max_steps", "2"],
    "generate": ["--max_rows", "8"],
    "rank": [],
    "compare": ["--max_steps", "1"],
    "eval": ["--max_samples", "4"],
    "judge": ["--max_samples", "2"],
}


def readme_walk() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- walk:start -->", 1)[1].split("<!-- walk:end -->", 1)[0]
    script = re.search(r"```bash\n(.*?)```", block, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_walks_every_step_of_the_pipeline():
    assert [command[:2] for command in readme_walk()] == [["trl-pro", step] for step in SMALLER]


@pytest.mark.slow
def test_readme_walk_runs_offline_on_the_embedded_defaults(tmp_path):
    for command in readme_walk():
        # `trl-pro CMD` runs trl_pro/scripts/CMD.py through `accelerate launch`; the script alone takes the same flags
        # in one process (the launcher itself is tested in test_commands.py)
        _, step, *flags = command
        argv = [sys.executable, "-m", f"trl_pro.scripts.{step}"]
        argv += [flag.replace("outputs/walk", str(tmp_path)) for flag in flags] + SMALLER[step]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr[-3000:]}"
    assert (tmp_path / "reward-model" / "config.json").is_file()
    assert {"pro", "rrhf", "best_of_n", "dpo", "base"} <= {p.stem for p in (tmp_path / "eval" / "responses").iterdir()}
    assert (tmp_path / "eval" / "results.json").is_file() and (tmp_path / "judge" / "judgments.jsonl").is_file()

"""The README's promises that can be checked mechanically."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", setup, re.S) for line in block.splitlines()
            if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert "examples/digits.sh" in commands[0] and "pytest" in commands[1]


def test_main_job_script_uses_only_nas_commands():
    script = (ROOT / "examples" / "digits.sh").read_text()
    steps = [line.split()[0] for line in script.splitlines() if line.strip().startswith("nas ")]
    assert steps and all(s == "nas" for s in steps)
    assert {"train", "predictors", "search", "export"} <= {line.split()[1] for line in script.splitlines()
                                                           if line.strip().startswith("nas ")}


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _setup_commands()[1] in ci

import re
import subprocess
import sys

from conftest import REPO


def test_generated_readme_sections_are_up_to_date():
    result = subprocess.run([sys.executable, "tools/update_readme.py", "--check"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_readme_shows_the_test_command_ci_runs():
    ci_commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                   if re.match(r"\s*python -m pytest", line)]
    assert len(ci_commands) == 1
    setup = (REPO / "README.md").read_text().split("## Set-up", 1)[1].split("```sh", 1)[1]
    install, tests = setup.split("```", 1)[0].strip().splitlines()
    assert tests.endswith(ci_commands[0])
    assert "pip install -c .ci/constraints.txt" in install and install.endswith("python -m zoo")

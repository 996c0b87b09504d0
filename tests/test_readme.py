"""The README's two commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_demo_and_test_commands():
    demo, tests = _readme_commands()
    assert "pip install torch==2.13.0" in demo.splitlines()[-1]
    assert "disarm-demo" in demo and "disarm-pipeline" in demo
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _readme_commands()
    test_command = tests.splitlines()[-1].split("&&")[-1].strip()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("torch==2.13.0") < ci.index("-e '.[test")

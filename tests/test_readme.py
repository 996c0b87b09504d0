"""The README's two commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [c.strip() for c in re.findall(r"```(?:bash|sh)\n(.*?)\n```", text, flags=re.S)[:2]]


def _ci_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]


def test_readme_starts_with_demo_and_test_commands():
    demo, tests = _readme_commands()
    for command in (demo, tests):
        assert "\n" not in command, "one line: CI runs it verbatim"
        # torch pinned before anything that pulls it in (unpinned: gigabytes of CUDA packages)
        assert command.startswith("pip install torch==2.13.0 && pip install ")
    assert "disarm-demo" in demo and "disarm-pipeline" in demo and "group" in demo
    assert "-e '.[test" in tests and "pytest" in tests


def test_ci_runs_the_readme_commands_verbatim_each_in_a_fresh_venv():
    demo, tests = _readme_commands()
    lines = _ci_lines()
    assert demo in lines and tests in lines
    i_demo, i_tests = lines.index(demo), lines.index(tests)
    assert i_demo < i_tests
    for i in (i_demo, i_tests):
        # A subshell: errexit would ignore a failure inside the && chain but at its end.
        assert lines[i - 1] == "(" and lines[i + 1] == ")", lines[i - 1 : i + 2]
        before = lines[:i]
        # A new venv (python3 -m venv, stock pip) made since the previous command.
        venv = max(n for n, line in enumerate(before) if line.startswith("fresh_venv "))
        assert venv > max([n for n in (i_demo, i_tests) if n < i], default=-1)
    assert any(line.startswith("python3 -m venv ") for line in lines)
    # Command 1 writes demo/ in the checkout: CI starts it from a clean slate.
    assert "rm -rf demo" in lines[:i_demo]


def test_ci_installs_nothing_the_readme_does_not_say():
    """No pip upgrade, no extra package: CI must fail where a user's install would."""
    readme = set(_readme_commands())
    code = [line for line in _ci_lines() if line and not line.startswith("#")]
    assert not [line for line in code if re.search(r"--upgrade|\bensurepip\b|\buv\b", line)]
    pip_lines = [line for line in code if re.search(r"\bpip[0-9.]*\b", line)]
    assert pip_lines and set(pip_lines) <= readme, set(pip_lines) - readme

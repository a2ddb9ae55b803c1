"""Docs that are generated from code stay in step with it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_config_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_starts_with_the_two_setup_commands():
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if x.strip()]
    ci = (ROOT / ".ci" / "run").read_text()
    code = lines[lines.index("```sh") + 1:lines.index("```sh") + 3]
    assert code[0].endswith("python -m mailexpress demo") and code[1].endswith("python -m pytest")
    for cmd in code:
        assert f'"{cmd}"' in ci

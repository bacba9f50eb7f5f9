"""Static checks: ShellCheck on every shell script, ruff on every Python file."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, require_command


def shell_scripts():
    root = Path(ROOT)
    tracked = subprocess.run(["git", "ls-files", "*.sh"], cwd=ROOT, capture_output=True, text=True).stdout
    return sorted({*tracked.split(), ".ci/run", *(str(p.relative_to(root)) for p in root.glob("**/*.sh")
                                                  if not any(part.startswith(".venv") for part in p.parts))})


def test_shellcheck_passes_on_every_shell_script():
    shellcheck = require_command("shellcheck", "every shell script must pass ShellCheck")
    scripts = shell_scripts()
    assert "promote.sh" in scripts and "entrypoint.sh" in scripts
    result = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout

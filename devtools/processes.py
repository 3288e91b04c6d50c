"""A fresh Python process, for what depends on import order or process-wide state."""

import subprocess
import sys

from devtools.paths import REPO


def python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -c code` from the repository root, with this interpreter."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def imports_then(first: list[str], probe: str, reverse: bool = False) -> list[str]:
    """What `probe` prints after the import lines `first` (in reverse order if asked)."""
    proc = python("\n".join(first[::-1] if reverse else first) + "\n" + probe)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()

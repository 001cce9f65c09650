"""Types that are checked, not only written: mypy over the package finds nothing.

Its settings are in pyproject.toml ([tool.mypy]); mypy comes with the
``test`` extra, so ``scripts/test`` runs this check with the rest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error(tmp_path):
    # a cache of its own: nothing left in the work tree (a cold run takes seconds)
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path),
                           "imgmatch"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = (done.stdout + done.stderr).strip()
    print(report)
    assert "No module named mypy" not in report, \
        "mypy is missing: install the test extra (pip install -e '.[test]')"
    assert done.returncode == 0, report
    assert report.startswith("Success: no issues found"), report


def test_the_package_says_it_is_typed():
    assert (ROOT / "imgmatch" / "py.typed").is_file()

"""tests/sql/synthea.slt is exactly what tests/sql/generate.py computes from the Synthea
JSON: the expected SQL results were not edited by hand (or copied from fhirlake)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_slt_is_the_generators_output():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "sql" / "generate.py")], check=True,
                         capture_output=True, text=True).stdout
    assert out == (ROOT / "tests" / "sql" / "synthea.slt").read_text(), \
        "regenerate: python3 tests/sql/generate.py > tests/sql/synthea.slt"
    assert out.count("\nquery ") >= 60

"""Where the test fixtures are, for the Python tests and the benchmark scripts:
`FHIRLAKE_FIXTURES` when set, else the repository's `tests/fixtures`, whose large sources
are unpacked from their archives first (`tests/fixtures/unpack.sh`, idempotent)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    if os.environ.get("FHIRLAKE_FIXTURES"):
        return Path(os.environ["FHIRLAKE_FIXTURES"])
    subprocess.run(["bash", str(ROOT / "tests" / "fixtures" / "unpack.sh")], check=True)
    return ROOT / "tests" / "fixtures"


FIXTURES = fixtures_root()

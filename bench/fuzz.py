"""Long fuzzing run of tests/mime/test_fuzz.py (the MIME view and the SMTP command/DATA parsers).

Usage: python bench/fuzz.py [EXAMPLES]   (default 20000 per property; the test suite runs 150)
Prints pytest's summary; a failure shows hypothesis's smallest failing input, to add as a test.
"""

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "LIVEPRISM_FUZZ_EXAMPLES": examples}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests/mime/test_fuzz.py")]
    return subprocess.run(command, cwd=root, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

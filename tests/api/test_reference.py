"""docs/reference.md is generated from slimkit.api's docstrings and kept in step with them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_reference_is_up_to_date():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "api_reference.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_every_public_name_is_documented():
    import slimkit.api as api

    missing = [n for n in api.__all__ if not (getattr(api, n).__doc__ or "").strip()]
    assert not missing, missing

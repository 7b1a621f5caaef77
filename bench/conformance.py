"""Conformance benchmark → bench/results/conformance.json: schemathesis, long budget.

The same check as tests/test_conformance.py (a real `ospo serve`, no policy, SQLite, all
schemathesis checks: no server error, every status, content type and header documented, every
schema-valid request served or refused with a documented status), with `--max-examples`
examples per operation instead of the tests' 6. No operation and no check is left out;
tests/conformance.toml states the one designed 5xx: `/admin/explain` without a worker answers
503 with Retry-After at once.

Run: `.venv/bin/python bench/conformance.py` (needs `ospo bootstrap`'s demo index under var/).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.results import header, write_json
from harness.stack import Api

from service.db.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEY = "conformance-bench-admin-key-0123"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=200, help="per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/conformance.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ospo-conformance-"))
    shutil.copytree(ROOT / "var" / "indexes", work / "indexes")
    upgrade(f"sqlite:///{work / 'ospo.db'}")
    env = {
        "OSPO_DATA_DIR": str(work), "OSPO_POLICY_BACKEND": "none", "OSPO_ADMIN_API_KEY": KEY,
        "OSPO_RATE_LIMIT_SEARCH": "", "OSPO_RATE_LIMIT_EVENTS": "", "OSPO_WORKER_TIMEOUT_S": "3",
    }  # fmt: skip
    api = Api(env, work / "api.log")
    url = api.url
    try:
        api.wait_ready("/healthz")
        started = time.monotonic()
        run = subprocess.run(
            [str(BIN / "st"), "--config-file", str(ROOT / "tests" / "conformance.toml"), "run",
             f"{url}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {KEY}", "--max-examples", str(args.max_examples),
             "--seed", str(args.seed)],
            capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        api.stop(30)
    print(run.stdout[-4000:])
    cases = re.search(r"(\d+) generated, (\d+) (?:passed|found)", run.stdout)
    result = {
        **header(__file__, argv),
        "max_examples_per_operation": args.max_examples,
        "seed": args.seed,
        "exit_code": run.returncode,
        "passed": run.returncode == 0,
        "test_cases": int(cases.group(1)) if cases else None,
        "seconds": round(seconds, 1),
        "summary": run.stdout[run.stdout.rfind("SUMMARY") :][:3000],
    }
    write_json(args.out, result, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

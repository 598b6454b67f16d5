#!/usr/bin/env python
"""Shows that every tenant-isolation and role check of the API has a test that fails without it.

Each check in ``beam_etl/api/app.py`` sits on a line marked ``# isolation:<rule>`` (the caller's
tenant filters a lookup) or ``# role:check``. For each marked line this script builds a copy of
the project in a temporary folder with only that line mutated — ``who.tenant_id`` replaced by
``None`` (the store then ignores the tenant), or the role test replaced by ``False`` — and runs
``tests/unit/test_api_tenancy.py`` against the copy. A mutant that passes the tests is a check no
test guards: the script exits 1 naming it. The unmutated copy must pass first.

    python scripts/check_isolation_mutants.py [--keep]     # make test-isolation-mutants
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

ROOT = Path(__file__).resolve().parents[1]
APP = Path("beam_etl/api/app.py")
TESTS = "tests/unit/test_api_tenancy.py"
MARK_RE = re.compile(r"#\s*(isolation:[\w-]+|role:check)\s*$")
MUTATIONS = {"isolation": ("who.tenant_id", "None"), "role": ("not who.may(minimum)", "False")}
COPY = ("beam_etl", "tests", "templates", "pyproject.toml", "setup.py")
TIMEOUT_S = 900


def mutants(source: str) -> list[tuple[str, int, str]]:
    """``(rule, line number, mutated source)`` for every marked line."""
    lines = source.splitlines(keepends=True)
    out = []
    for number, line in enumerate(lines, 1):
        match = MARK_RE.search(line)
        if not match:
            continue
        old, new = MUTATIONS[match.group(1).split(":")[0]]
        if old not in line:
            raise SystemExit(f"{APP}:{number}: marked line has no {old!r} to mutate: {line.strip()}")
        mutated = [*lines[:number - 1], line.replace(old, new), *lines[number:]]
        out.append((match.group(1), number, "".join(mutated)))
    return out


def copy_project(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, target / name, ignore=ignore)
        else:
            shutil.copy2(src, target / name)


def run_tests(copy: Path) -> tuple[int, str, float]:
    """Runs the tenancy tests against ``copy`` (first on PYTHONPATH); (exit code, first failure, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    check = subprocess.run([sys.executable, "-c", "import beam_etl; print(beam_etl.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True)
    if not check.stdout.strip().startswith(str(copy)):
        raise SystemExit(f"the copy is not the beam_etl imported: {check.stdout.strip()}")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", TESTS, "-x", "-q", "-p", "no:cacheprovider", "-rf",
                           "--timeout=600"], cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    failed = next((line.removeprefix("FAILED ").split(" - ")[0] for line in proc.stdout.splitlines()
                   if line.startswith("FAILED ")), "")
    return proc.returncode, failed or proc.stdout.strip().splitlines()[-1:][0], time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    args = parser.parse_args()
    source = (ROOT / APP).read_text(encoding="utf-8")
    found = mutants(source)
    print(f"{len(found)} marked checks in {APP}")
    work = Path(tempfile.mkdtemp(prefix="beam_etl_mutants_"))
    survivors = []
    try:
        baseline = work / "baseline"
        copy_project(baseline)
        code, detail, seconds = run_tests(baseline)
        print(f"baseline (no mutation): exit {code} in {seconds:.0f} s {'' if code == 0 else detail}")
        if code != 0:
            return 1
        for rule, number, mutated in found:
            copy = work / f"{rule.replace(':', '_')}_{number}"
            copy_project(copy)
            (copy / APP).write_text(mutated, encoding="utf-8")
            code, detail, seconds = run_tests(copy)
            verdict = "killed" if code != 0 else "SURVIVED"
            print(f"{rule:<28} line {number:<4} {verdict:<9} {seconds:5.0f} s  {detail}")
            if code == 0:
                survivors.append(f"{rule} (line {number})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if survivors:
        print(f"checks no test guards: {', '.join(survivors)}")
        return 1
    print(f"every one of the {len(found)} checks is guarded: removing it fails {TESTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

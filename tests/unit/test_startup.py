"""The command line's start-up: the collector pauses during imports and what they made is frozen."""

from __future__ import annotations

import gc
import subprocess
import sys

from beam_etl import _startup
from beam_etl.runners.direct import SAMPLING_PERIOD_MS, short_state_sampling

PROBE = (
    "import gc, runpy, sys\n"
    "sys.argv = ['beam_etl.run', '--list-templates']\n"
    "try:\n"
    "    runpy.run_module('beam_etl.run', run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    assert done.code in (0, None), done.code\n"
    "print(gc.get_freeze_count(), gc.isenabled())\n"
)


def probe(env_extra: dict[str, str]) -> tuple[int, bool]:
    env = {k: v for k, v in __import__("os").environ.items() if k != _startup.DISABLE_ENV} | env_extra
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    frozen, enabled = out.stdout.split()[-2:]
    return int(frozen), enabled == "True"


def test_a_cli_run_freezes_its_imports_and_turns_the_collector_back_on():
    frozen, enabled = probe({})
    assert frozen > 100_000 and enabled  # Beam, pyarrow and pandas make a few million objects


def test_the_environment_switch_keeps_the_default_behaviour():
    assert probe({_startup.DISABLE_ENV: "1"}) == (0, True)


def test_importing_the_module_as_a_library_changes_nothing():
    assert _startup.begin_imports("beam_etl.run") is False
    was_enabled = gc.isenabled()
    _startup.end_imports(False)
    assert gc.isenabled() == was_enabled


def test_short_state_sampling_applies_only_inside_the_block():
    from apache_beam.runners.worker import statesampler

    before = statesampler.StateSampler.__init__.__defaults__
    with short_state_sampling():
        assert statesampler.StateSampler("p", None).sampling_period_ms == SAMPLING_PERIOD_MS
    assert statesampler.StateSampler.__init__.__defaults__ == before
    assert statesampler.StateSampler("p", None).sampling_period_ms == before[0]

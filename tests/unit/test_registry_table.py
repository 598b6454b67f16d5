"""The registry's type -> module table matches the decorators, and a lookup imports only what it names."""

from __future__ import annotations

import subprocess
import sys

from beam_etl import registry


def test_every_registered_type_is_in_the_table_with_its_module():
    entries = registry.entries()  # imports every built-in module
    assert {e.name for e in entries} == set(registry._TYPE_MODULES)
    wrong = {e.name: e.factory.__module__ for e in entries if e.factory.__module__ != registry._TYPE_MODULES[e.name]}
    assert wrong == {}


def test_load_builtins_leaves_the_driver_modules_out():
    assert not set(registry._BUILTIN_MODULES) & registry._DRIVER_MODULES
    assert set(registry._BUILTIN_MODULES) | registry._DRIVER_MODULES == set(registry._TYPE_MODULES.values())


def test_a_lookup_imports_only_the_module_of_its_type():
    code = (
        "import sys\n"
        "from beam_etl import registry\n"
        "for name in ('ReadFromCsv', 'NullRemover', 'ExactDeduplicator', 'GroupByAggregate', 'WriteToParquet'):\n"
        "    assert registry.lookup(name) is not None, name\n"
        "heavy = ('scipy', 'sklearn', 'rapidfuzz', 'beam_etl.transforms.fuzzy_dedup', 'beam_etl.transforms.anomaly',\n"
        "         'beam_etl.io.kafka', 'psycopg2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unknown_type_is_none():
    assert registry.lookup("NoSuchStep") is None

"""Template validation: every error names the YAML path, the bad value and what is allowed."""

from __future__ import annotations

import copy

import pytest

from beam_etl.ops.secrets import redact
from beam_etl.spec import TemplateError, build_spec, list_templates, load_document

BASE = {
    "name": "t",
    "params": {"input": "in.csv"},
    "sources": [{"name": "orders", "type": "ReadFromCsv", "config": {"path": "{{ input }}"}}],
    "steps": [{"name": "clean", "type": "NullRemover", "input": "orders",
               "config": {"drop_rows": {"fields": ["id"]}}}],
    "sinks": [{"name": "out", "type": "WriteToParquet", "input": "clean", "config": {"path": "{{ run_dir }}/o"}}],
}


def doc(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def error_of(document, overrides=None) -> str:
    with pytest.raises(TemplateError) as info:
        build_spec(document, overrides, {"run_dir": "/tmp/r", "run_id": "r"})
    return str(info.value)


def test_valid_template_resolves_params_and_run_vars(tmp_path):
    (tmp_path / "in.csv").write_text("id\n1\n")
    spec, configs = build_spec(doc(params={"input": str(tmp_path / "in.csv")}), [],
                               {"run_dir": "/tmp/r", "run_id": "r"})
    assert spec.sources[0].config["path"] == str(tmp_path / "in.csv")
    assert spec.sinks[0].config["path"] == "/tmp/r/o"
    assert set(configs) >= {"orders", "clean", "out", "__dlq__"}


def test_unknown_top_level_key():
    message = error_of(doc(sourcez=[]))
    assert "sourcez: unknown key" in message


def test_unknown_type_suggests_close_match():
    d = doc()
    d["steps"][0]["type"] = "NullRemovr"
    message = error_of(d)
    assert "steps[0] (clean).type: 'NullRemovr' is not a known step" in message
    assert "did you mean 'NullRemover'" in message


def test_unknown_config_key_names_yaml_path():
    d = doc()
    d["steps"][0]["config"]["bogus"] = 1
    message = error_of(d)
    assert "steps[0] (clean).config.bogus: unknown key" in message


def test_bad_input_reference():
    d = doc()
    d["sinks"][0]["input"] = "cleen"
    message = error_of(d)
    assert "sinks[0] (out).input: 'cleen' is not an earlier source or step" in message
    assert "did you mean 'clean'" in message


def test_duplicate_names():
    d = doc()
    d["steps"][0]["name"] = "orders"
    d["sinks"][0]["input"] = "orders"
    assert "'orders' is already used" in error_of(d)


def test_out_of_range_value_shows_value_and_limit():
    message = error_of(doc(error_budget={"max_fraction": 2}))
    assert "error_budget.max_fraction" in message and "less than or equal to 1" in message and "(got 2)" in message


def test_missing_env_var_names_path(monkeypatch):
    monkeypatch.delenv("BEAM_ETL_TEST_MISSING", raising=False)
    d = doc()
    d["sources"][0]["config"]["path"] = "${BEAM_ETL_TEST_MISSING}"
    message = error_of(d)
    assert "sources[0] (orders).config.path" in message and "${BEAM_ETL_TEST_MISSING} is not set" in message


def test_env_substitution_registers_secret(monkeypatch, tmp_path):
    (tmp_path / "x.csv").write_text("id\n1\n")
    monkeypatch.setenv("BEAM_ETL_TEST_SECRET_DIR", str(tmp_path))
    d = doc()
    d["sources"][0]["config"]["path"] = "${BEAM_ETL_TEST_SECRET_DIR}/x.csv"
    spec, _ = build_spec(d, [], {"run_dir": "/tmp/r", "run_id": "r"})
    assert spec.sources[0].config["path"] == f"{tmp_path}/x.csv"
    assert str(tmp_path) not in redact(f"opened {tmp_path}/x.csv")


def test_only_secret_looking_env_names_are_registered(monkeypatch, tmp_path):
    (tmp_path / "z.csv").write_text("id\n1\n")
    monkeypatch.setenv("BEAM_ETL_TEST_HOST_DIR", str(tmp_path / "plain-dir-value"))
    monkeypatch.setenv("BEAM_ETL_TEST_DB_PASS", "pw-canary-8841")
    d = doc()
    d["sources"][0]["config"]["path"] = str(tmp_path / "z.csv")
    d["params"] = {"where": "${BEAM_ETL_TEST_HOST_DIR}", "pw": "${BEAM_ETL_TEST_DB_PASS}"}
    build_spec(d, [], {"run_dir": "/tmp/r", "run_id": "r"})
    assert redact("pw-canary-8841 at host") == "*** at host"
    assert "plain-dir-value" in redact(f"{tmp_path}/plain-dir-value")  # a host or folder stays readable


def test_env_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BEAM_ETL_TEST_UNSET", raising=False)
    (tmp_path / "y.csv").write_text("id\n1\n")
    d = doc()
    d["sources"][0]["config"]["path"] = "${BEAM_ETL_TEST_UNSET:-" + str(tmp_path / "y.csv") + "}"
    spec, _ = build_spec(d, [], {"run_dir": "/tmp/r", "run_id": "r"})
    assert spec.sources[0].config["path"] == str(tmp_path / "y.csv")


def test_unknown_variable():
    d = doc()
    d["sinks"][0]["config"]["path"] = "{{ nope }}/x"
    message = error_of(d)
    assert "unknown variable {{ nope }}" in message and "input" in message


def test_set_override_by_name_and_param(tmp_path):
    (tmp_path / "z.csv").write_text("id\n1\n")
    spec, _ = build_spec(doc(), [f"params.input={tmp_path / 'z.csv'}", "sinks.out.config.path=/tmp/elsewhere"],
                         {"run_dir": "/tmp/r", "run_id": "r"})
    assert spec.sources[0].config["path"] == str(tmp_path / "z.csv")
    assert spec.sinks[0].config["path"] == "/tmp/elsewhere"


def test_set_override_unknown_item():
    message = error_of(doc(), ["steps.nope.config.x=1"])
    assert "no item 'nope'" in message and "clean" in message


def test_set_override_needs_equals():
    assert "expected dotted.key=value" in error_of(doc(), ["params.input"])


def test_every_bundled_template_is_valid_yaml():
    templates = list_templates()
    assert templates, "templates/ is empty"
    for path in templates:
        document = load_document(path)
        assert {"name", "sources", "sinks"} <= set(document), path

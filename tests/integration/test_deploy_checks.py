"""Static checks of the deployment code (scripts/deploy_checks.sh): checkov over the Terraform and
the workflows, actionlint (with shellcheck) over the workflows, terraform fmt and validate.

checkov and actionlint are required: a test fails when they cannot be installed. Terraform is
checked when a binary can be had; `terraform validate` is skipped only when the hashicorp/aws
provider cannot be downloaded. The negative tests break copies on purpose, so the scans are shown
to fail on real problems and cannot pass vacuously.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "deploy_checks.sh"
TF_DIR = REPO / "deploy" / "terraform" / "aws"
WORKFLOWS = REPO / ".github" / "workflows"
PROVIDER_DOWNLOAD_ERRORS = re.compile(
    r"Failed to query available provider packages|Failed to install provider|could not connect to registry"
    r"|Failed to resolve provider packages|no available releases match")


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
         cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """NAME -> path of checkov, actionlint, shellcheck, terraform ('' when missing), installed if needed."""
    result = _run(["bash", str(SCRIPT), "install"], timeout=2400)
    if result.returncode != 0:
        pytest.fail(f"scripts/deploy_checks.sh install failed (exit {result.returncode}); checkov and actionlint "
                    f"are required:\n{result.stderr[-4000:]}")
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    for required in ("checkov", "actionlint"):
        if not paths.get(required):
            pytest.fail(f"{required} is required but was not installed by scripts/deploy_checks.sh install:\n"
                        f"{result.stderr[-4000:]}")
    return paths


def _checkov(tools: dict[str, str], *args: str) -> dict:
    """One checkov run with JSON output; returns the report (single framework)."""
    result = _run([tools["checkov"], "--skip-download", "-o", "json", *args], timeout=300)
    assert result.stdout.strip(), f"checkov printed no report (exit {result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    if isinstance(report, list):
        assert len(report) == 1, f"expected one framework's report, got {[r.get('check_type') for r in report]}"
        report = report[0]
    return report


def _failures(report: dict) -> list[str]:
    return [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
            for c in report.get("results", {}).get("failed_checks", [])]


@pytest.mark.parametrize("var_file", [None, "examples/production.tfvars"], ids=["defaults", "example-tfvars"])
def test_checkov_terraform_has_no_failed_checks(tools: dict[str, str], var_file: str | None) -> None:
    args = ["-d", str(TF_DIR), "--framework", "terraform"]
    if var_file:
        args += ["--var-file", str(TF_DIR / var_file)]
    report = _checkov(tools, *args)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse some Terraform: {summary}"
    assert summary["resource_count"] > 50 and summary["passed"] > 100, f"the scan found almost nothing: {summary}"
    assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(_failures(report))


def test_every_checkov_skip_is_inline_with_a_reason_and_documented(tools: dict[str, str]) -> None:
    report = _checkov(tools, "-d", str(TF_DIR), "--framework", "terraform")
    skipped = report["results"]["skipped_checks"]
    readme = (TF_DIR / "README.md").read_text()
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a real reason"
        assert check["check_id"] in readme, f"{check['check_id']} is skipped but not listed in {TF_DIR}/README.md"
    tf_text = "\n".join(p.read_text() for p in TF_DIR.rglob("*.tf"))
    inline = set(re.findall(r"#checkov:skip=(CKV2?_AWS_\d+):", tf_text))
    assert inline == {c["check_id"] for c in skipped}, "an inline skip is unused, or a skip is not inline"


def test_checkov_github_actions_has_no_failed_checks(tools: dict[str, str]) -> None:
    report = _checkov(tools, "-d", str(WORKFLOWS), "--framework", "github_actions")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["passed"] > 10, f"the scan found almost nothing: {summary}"
    assert summary["failed"] == 0, "checkov failed checks:\n" + "\n".join(_failures(report))


def test_checkov_fails_on_a_public_unencrypted_bucket(tools: dict[str, str], tmp_path: Path) -> None:
    """A copy with the data buckets' public access block opened and their encryption removed must fail."""
    copy = tmp_path / "aws"
    shutil.copytree(TF_DIR, copy, ignore=shutil.ignore_patterns(".terraform*"))
    bucket = copy / "modules" / "s3-bucket" / "main.tf"
    text = bucket.read_text()
    opened = re.sub(r"(block_public_acls|block_public_policy|ignore_public_acls|restrict_public_buckets)\s*=\s*true",
                    r"\1 = false", text)
    unencrypted = re.sub(r'resource "aws_s3_bucket_server_side_encryption_configuration" "this" \{.*?\n\}\n', "",
                         opened, flags=re.S)
    assert unencrypted != opened and opened != text, "the s3-bucket module changed: update this test's edits"
    bucket.write_text(unencrypted)

    result = _run(["bash", str(SCRIPT), "checkov"], timeout=600,
                  env={"DEPLOY_CHECKS_TF_DIR": str(copy), "DEPLOY_CHECKS_WORKFLOWS_DIR": str(WORKFLOWS)})
    assert result.returncode == 1, f"deploy_checks.sh passed a public, unencrypted bucket:\n{result.stdout[-3000:]}"
    for check_id in ("CKV_AWS_145", "CKV_AWS_53", "CKV_AWS_56"):  # KMS default encryption, public access block
        assert f"Check: {check_id}:" in result.stdout, f"{check_id} did not fail:\n{result.stdout[-3000:]}"
    assert "FAILED" in result.stdout.splitlines()[-1]


def test_actionlint_reports_no_findings(tools: dict[str, str]) -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files, f"no workflows in {WORKFLOWS}"
    result = _run([tools["actionlint"], "-no-color", f"-shellcheck={tools.get('shellcheck', '')}", "-pyflakes=",
                   *files], timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), f"actionlint findings:\n{result.stdout}{result.stderr}"
    # The script also checks action inputs with each pinned tag read as its major version.
    script = _run(["bash", str(SCRIPT), "actionlint"], timeout=300)
    assert script.returncode == 0, f"deploy_checks.sh actionlint failed:\n{script.stdout}{script.stderr[-2000:]}"
    assert "action inputs valid" in script.stdout


def test_actionlint_fails_on_a_broken_workflow(tools: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text(
        "name: broken\n"
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4.2.2\n"
        "      - run: echo ${{ github.no_such_context }}\n"
        "      - run: echo $UNQUOTED_VAR > $OUT\n"
        "      - uses: actions/setup-python@v5.6.0\n"
        "        with:\n"
        "          python_version: '3.11'\n")
    result = _run(["bash", str(SCRIPT), "actionlint"], timeout=300, env={"DEPLOY_CHECKS_WORKFLOWS_DIR": str(tmp_path)})
    assert result.returncode == 1, f"deploy_checks.sh actionlint passed a broken workflow:\n{result.stdout}"
    assert "[expression]" in result.stdout, result.stdout
    assert "[action]" in result.stdout, f"the unknown input of actions/setup-python was not flagged:\n{result.stdout}"
    if tools.get("shellcheck"):
        assert "[shellcheck]" in result.stdout, f"shellcheck did not flag the unquoted variables:\n{result.stdout}"


@pytest.fixture(scope="module")
def terraform(tools: dict[str, str]) -> str:
    if not tools.get("terraform"):
        pytest.skip("no terraform binary: none >= 1.5 on PATH and `go install github.com/hashicorp/terraform@v1.8.5` "
                    "failed (see scripts/deploy_checks.sh install)")
    return tools["terraform"]


def _tf_env(tmp_path: Path) -> dict[str, str]:
    rc = tmp_path / "terraformrc"
    rc.write_text("disable_checkpoint = true\n")
    return {"TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def test_terraform_fmt_check(terraform: str, tmp_path: Path) -> None:
    result = _run([terraform, f"-chdir={TF_DIR}", "fmt", "-check", "-recursive", "-diff", "-no-color"], timeout=120,
                  env=_tf_env(tmp_path))
    assert result.returncode == 0, f"terraform fmt -check found unformatted files:\n{result.stdout}{result.stderr}"


def test_terraform_validate(terraform: str, tmp_path: Path) -> None:
    copy = tmp_path / "aws"
    shutil.copytree(TF_DIR, copy, ignore=shutil.ignore_patterns(".terraform*"))
    env = _tf_env(tmp_path)
    init_cmd = [terraform, f"-chdir={copy}", "init", "-backend=false", "-input=false", "-no-color"]
    if os.environ.get("TF_PLUGIN_DIR"):
        init_cmd.append(f"-plugin-dir={os.environ['TF_PLUGIN_DIR']}")
    init = _run(init_cmd, timeout=600, env=env)
    if init.returncode != 0:
        output = init.stdout + init.stderr
        if PROVIDER_DOWNLOAD_ERRORS.search(output):
            detail = " ".join(output[output.find("Error:"):].split())
            pytest.skip(f"terraform validate not run: the hashicorp/aws provider cannot be downloaded here "
                        f"({detail[:300]}); set TF_PLUGIN_DIR to a filesystem mirror that has it")
        pytest.fail(f"terraform init -backend=false failed for another reason than the provider download:\n{output}")
    validate = _run([terraform, f"-chdir={copy}", "validate", "-no-color"], timeout=300, env=env)
    assert validate.returncode == 0, f"terraform validate failed:\n{validate.stdout}{validate.stderr}"

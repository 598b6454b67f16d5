"""scripts/check_containers.py: the real container files pass; broken temp copies fail with named errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ("Dockerfile", ".dockerignore", "docker-compose.yml", "requirements.txt", "setup.py", "pyproject.toml",
         "README.md")


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_containers", ROOT / "scripts" / "check_containers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temp copy of what the checker reads; package folders are empty (only their presence matters)."""
    for name in FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("beam_etl", "templates"):
        (tmp_path / folder).mkdir()
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def problems(root: Path, **kwargs: bool) -> list[str]:
    kwargs.setdefault("run_docker", False)
    return [str(p) for p in checker.check_all(root, **kwargs).problems]


def test_real_files_pass() -> None:
    report = checker.check_all(ROOT)
    assert report.problems == []
    notes = "\n".join(report.notes)
    assert "hadolint ran" in notes
    assert "Compose Specification" in notes
    assert "docker compose config" in notes  # ran or said why it was skipped


def test_pins_come_from_the_project_files() -> None:
    pins = checker.read_pins(ROOT, checker.Report())
    assert pins.beam == "2.75.0"
    assert pins.python == "3.11"
    assert pins.package_version == "0.1.0"


def test_temp_copy_passes(project: Path) -> None:
    assert problems(project) == []


def test_wrong_beam_version_in_from(project: Path) -> None:
    edit(project / "Dockerfile", "FROM apache/beam_python3.11_sdk:2.75.0", "FROM apache/beam_python3.11_sdk:2.74.0")
    found = problems(project, run_hadolint=False)
    assert any(p.startswith("Dockerfile: line ") and "(FROM)" in p and "'2.74.0'" in p
               and "apache-beam==2.75.0" in p for p in found), found


def test_wrong_python_in_from(project: Path) -> None:
    edit(project / "Dockerfile", "FROM apache/beam_python3.11_sdk:2.75.0", "FROM apache/beam_python3.12_sdk:2.75.0")
    found = problems(project, run_hadolint=False)
    assert any("(FROM)" in p and "Python 3.12" in p and "3.11" in p for p in found), found


def test_entrypoint_override_and_root_user(project: Path) -> None:
    edit(project / "Dockerfile", "USER 10001:10001", 'USER root\nENTRYPOINT ["python"]')
    found = problems(project, run_hadolint=False)
    assert any("(ENTRYPOINT)" in p and "boot" in p for p in found), found
    assert any("(USER)" in p and "'root'" in p for p in found), found


def test_dockerignore_must_not_exclude_copied_files(project: Path) -> None:
    with (project / ".dockerignore").open("a", encoding="utf-8") as f:
        f.write("templates\n")
    found = problems(project, run_hadolint=False)
    assert any(p.startswith(".dockerignore: templates: excludes 'templates'") for p in found), found


def test_dockerignore_rules() -> None:
    rules = checker.read_dockerignore(ROOT / ".dockerignore")
    assert checker.is_ignored(".git/config", rules)
    assert checker.is_ignored("beam_etl/io/__pycache__/files.cpython-311.pyc", rules)
    assert not checker.is_ignored("beam_etl/io/files.py", rules)
    assert not checker.is_ignored("README.md", rules)


def test_hadolint_findings_fail(project: Path) -> None:
    edit(project / "Dockerfile", "USER 10001:10001", "RUN pip install requests\nUSER 10001:10001")
    found = problems(project)
    assert any("(DL3013)" in p and "hadolint warning" in p for p in found), found


def test_depends_on_missing_service(project: Path) -> None:
    edit(project / "docker-compose.yml", "      worker-pool:\n        condition: service_healthy\n",
         "      worker-pool:\n        condition: service_healthy\n      ghost:\n        condition: service_started\n")
    found = problems(project)
    assert any(p.startswith("docker-compose.yml: services.launcher.depends_on: depends on 'ghost'")
               for p in found), found


def test_port_on_all_interfaces(project: Path) -> None:
    edit(project / "docker-compose.yml", '"127.0.0.1:${KAFKA_HOST_PORT:-19092}:19092"', '"0.0.0.0:19092:19092"')
    found = problems(project)
    assert any(p.startswith("docker-compose.yml: services.kafka.ports[0]:") and "publishes on 0.0.0.0" in p
               for p in found), found


def test_unquoted_port_is_an_error(project: Path) -> None:
    # YAML 1.1 reads an unquoted 2222:22 as the base-60 integer 133342.
    edit(project / "docker-compose.yml", '- "127.0.0.1:${POSTGRES_PORT:-5432}:5432"', "- 2222:22")
    found = problems(project)
    assert any(p.startswith("docker-compose.yml: services.postgres.ports[0]:") and "quoted string" in p
               for p in found), found


def test_variable_without_default(project: Path) -> None:
    edit(project / "docker-compose.yml", "${POSTGRES_PASSWORD:-beam_etl}", "${POSTGRES_PASSWORD}")
    found = problems(project)
    assert any("services.postgres.environment.POSTGRES_PASSWORD" in p and "no default" in p for p in found), found


def test_undeclared_volume(project: Path) -> None:
    edit(project / "docker-compose.yml", "  postgres-data:\n", "")
    found = problems(project)
    assert any("services.postgres.volumes[0]" in p and "'postgres-data' is not declared" in p for p in found), found


def test_beam_image_version_must_match_pin(project: Path) -> None:
    edit(project / "docker-compose.yml", "apache/beam_flink1.19_job_server:2.75.0",
         "apache/beam_flink1.19_job_server:2.74.0")
    found = problems(project)
    assert any("services.flink-job-server.image" in p and "2.74.0" in p and "apache-beam==2.75.0" in p
               for p in found), found


def test_flink_versions_must_agree(project: Path) -> None:
    compose = project / "docker-compose.yml"
    compose.write_text(compose.read_text(encoding="utf-8").replace("flink:1.19.3-scala_2.12-java17",
                                                                   "flink:1.18.1-scala_2.12-java17"))
    found = problems(project)
    assert any("services.jobmanager.image" in p and "Flink 1.19" in p for p in found), found


def test_schema_rejects_unknown_service_key(project: Path) -> None:
    edit(project / "docker-compose.yml", "    command: jobmanager\n", "    command: jobmanager\n    imagee: x\n")
    found = problems(project)
    assert any(p.startswith("docker-compose.yml: services.jobmanager: Compose schema:") and "imagee" in p
               for p in found), found


def test_external_environment_must_reach_worker_pool_through_task_manager(project: Path) -> None:
    edit(project / "docker-compose.yml", "- --environment_config=localhost:50000",
         "- --environment_config=worker-pool:50000")
    found = problems(project)
    assert any("services.launcher.command" in p and "network_mode: service:taskmanager" in p for p in found), found


def test_endpoint_must_name_a_service(project: Path) -> None:
    edit(project / "docker-compose.yml", "--job_endpoint=flink-job-server:8099", "--job_endpoint=jobserver:8099")
    found = problems(project)
    assert any("--job_endpoint=jobserver:8099: 'jobserver' is not a service" in p for p in found), found


def test_main_exit_codes(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert checker.main(["--root", str(project), "--no-hadolint"]) == 0
    edit(project / "docker-compose.yml", '"127.0.0.1:${FLINK_UI_PORT:-8081}:8081"', '"8081:8081"')
    assert checker.main(["--root", str(project), "--no-hadolint"]) == 1
    err = capsys.readouterr().err
    assert "ERROR docker-compose.yml: services.jobmanager.ports[0]:" in err

"""Packaging for beam_etl; also Beam's ``--setup_file`` for staging the package to workers."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="beam_etl",
    version="0.1.0",
    description="ETL pipelines on Apache Beam over Arrow batches, with a dead-letter queue on every step",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["beam_etl", "beam_etl.*"]), "beam_etl.templates"],
    package_dir={"beam_etl.templates": "templates"},
    package_data={"beam_etl": ["data/*.csv", "data/*.md", "ml/data/*.txt", "ml/models/*.npz"],
                  "beam_etl.api": ["static/*.html", "static/*.js", "static/*.css"],
                  "beam_etl.templates": ["*.yaml"]},
    include_package_data=True,
    install_requires=_requirements(),
    entry_points={"console_scripts": ["beam-etl=beam_etl.run:main", "beam-etl-dlq=beam_etl.dlq:main"]},
)

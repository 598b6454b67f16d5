# syntax=docker/dockerfile:1
# beam_etl worker and launcher image.
#
# Built on Beam's Python SDK image for the pinned apache-beam (requirements.txt) and Python 3.11,
# so its ENTRYPOINT stays /opt/apache/beam/boot and one image serves both roles:
#   worker pool (Flink/Spark portable runners, environment_type=EXTERNAL):
#     docker run IMAGE --worker_pool                                   (listens on port 50000)
#   launcher (submits a pipeline):
#     docker run --entrypoint python IMAGE -m beam_etl.run --runner=PortableRunner ...
# Checked statically by `python scripts/check_containers.py`; see docs/docker.md.
FROM apache/beam_python3.11_sdk:2.75.0

ARG BEAM_ETL_VERSION=0.1.0

LABEL org.opencontainers.image.title="beam_etl" \
      org.opencontainers.image.description="beam_etl ETL pipelines on Apache Beam: SDK worker pool and launcher" \
      org.opencontainers.image.version="${BEAM_ETL_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="apache/beam_python3.11_sdk:2.75.0" \
      org.apache.beam.version="2.75.0"

# HF_HUB_OFFLINE: the embedding model comes from a pip package, never from a hub at run time.
# BEAM_ETL_OUTPUT_DIR: run folders go to a volume, not into the (read-only) source tree.
ENV HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BEAM_ETL_OUTPUT_DIR=/data/output

WORKDIR /opt/beam_etl

# Dependencies first, in their own layer: they change far less often than the code.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# setup.py reads requirements.txt and README.md and maps beam_etl.templates to templates/.
COPY setup.py pyproject.toml README.md ./
COPY beam_etl/ beam_etl/
COPY templates/ templates/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# Non-root user. Beam's boot creates a per-worker virtualenv under /opt/apache/beam-venv and
# stages artifacts in /tmp (its semi-persistent dir), so both must be writable by this user;
# /data/output is where run folders go (mount a volume there).
RUN groupadd --system --gid 10001 beam \
    && useradd --system --uid 10001 --gid beam --create-home --home-dir /home/beam beam \
    && mkdir -p /opt/apache/beam-venv /data/output \
    && chown beam:beam /opt/apache/beam-venv /data/output
USER 10001:10001

# Worker pool port (boot --worker_pool serves on 50000).
EXPOSE 50000

# syntax=docker/dockerfile:1
# radfed site node: `radfed-node` (bus agent, DICOM listener, ingest) and `flower-supernode`.
# Build from the repository root:  docker build -f deploy/docker/node.Dockerfile -t radfed-node:0.1.0 .
# The base is pinned to an exact patch release; pin it by digest too in a registry you mirror
# (FROM python:3.11.11-slim-bookworm@sha256:...). dcmtk is not needed: DICOM networking is pynetdicom.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdm ./cdm
COPY node ./node
COPY coordinator ./coordinator
# One wheel for the radfed distribution, installed with its pinned-range dependencies into a venv
# that the runtime stage copies whole (no compiler or build files in the final image).
# TORCH_INDEX: PyTorch's CPU-only wheel index as an extra index keeps the CUDA libraries (several GB)
# out of the image; torch==X matches X+cpu.  Empty: everything from the default index.
ARG TORCH_INDEX=""
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/radfed/venv \
 && /opt/radfed/venv/bin/pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} /wheels/radfed-*.whl

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="radfed-node" \
      org.opencontainers.image.description="radfed site node: OMOP CDM ingest, federated query agent, DICOM listener" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 radfed \
 && useradd --system --uid 10001 --gid radfed --home-dir /var/lib/radfed --shell /usr/sbin/nologin radfed \
 && install -d -o radfed -g radfed -m 0750 /var/lib/radfed /var/lib/radfed/node \
 && install -d -m 0755 /etc/radfed
COPY --from=build /opt/radfed/venv /opt/radfed/venv
ENV PATH=/opt/radfed/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/radfed/node
VOLUME ["/var/lib/radfed/node"]
EXPOSE 11112
# Healthy when node.toml loads and the CDM accepts a connection (one round trip, no table scans; the
# agent itself holds no listening port to probe).
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
  CMD ["python", "-c", "from cdm.db import open_engine; from node.config import load_config; open_engine(load_config('/etc/radfed/node.toml').database_url).dispose()"]
ENTRYPOINT []
CMD ["radfed-node", "--config", "/etc/radfed/node.toml", "serve"]

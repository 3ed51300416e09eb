# parakeet-server as a container image: the server and client installed into a virtual
# environment in a build stage, copied into a slim runtime stage with OpenBLAS, run as a
# non-root user. The model is not in the image: it is fetched from Hugging Face at first start
# into the /models volume (HF_HOME), or mounted there and named with PARAKEET_MODEL.
#
#   docker build -t parakeet-server .
#   docker run -p 50051:50051 -v parakeet-models:/models -v parakeet-cache:/cache parakeet-server
#
# tests/test_deploy.py checks this file (every COPY source exists, the stages, the user, the
# health check), lints it with hadolint and runs its health-check script against a real
# server; docs/deployment.md says what has not been run.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
# One resolve for both: the server's requirement on parakeet-client is met by ./client.
RUN python -m venv /opt/parakeet \
    && /opt/parakeet/bin/pip install ./client ./

FROM ${PYTHON_IMAGE}
# The mlx-cpu wheel bundles a reference BLAS ~30x slower than OpenBLAS; the server finds and
# loads Debian's OpenBLAS by itself (server/parakeet_server/engine/runtime.py). Not pinned:
# Debian stable's version moves only with security and point releases.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopenblas0-pthread \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /home/parakeet --create-home parakeet \
    && mkdir -p /models /cache \
    && chown parakeet:parakeet /models /cache
COPY --from=build /opt/parakeet /opt/parakeet
COPY deploy/grpc_health_check.py /opt/parakeet/bin/grpc-health-check
ENV PATH=/opt/parakeet/bin:$PATH \
    HF_HOME=/models \
    PARAKEET_HOST=0.0.0.0 \
    PARAKEET_PORT=50051 \
    PARAKEET_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
VOLUME ["/models", "/cache"]
USER 10001:10001
EXPOSE 50051
# grpc.health.v1 on the server's own port: healthy once the model is loaded and warm. The first
# start downloads ~2.5 GB, hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["grpc-health-check"]
ENTRYPOINT ["parakeet-server"]

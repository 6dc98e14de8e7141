# syntax=docker/dockerfile:1
# One image for every agentstream process: the command picks it.
#   docker run agentstream consume persistence      (or loops, budget, metrics, tracing)
#   docker run agentstream topics create --partitions 6
#   docker run agentstream demo --agents 4 --rate 20
# Settings come from AGENTSTREAM_* environment variables (docs/deploy.md).
ARG PYTHON_VERSION=3.12

# --- builder: the agentstream wheel and every dependency's wheel ---------------------------
FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY schemas/ schemas/
COPY producer/ producer/
COPY consumers/ consumers/
# The services' extras: PostgreSQL for persistence, OTLP messages for tracing, rich output.
RUN python -m pip wheel --wheel-dir /wheels ".[postgres,tracing,services]"

# --- runtime: the installed wheels, no compiler, no sources --------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AGENTSTREAM_HTTP_HOST=0.0.0.0 \
    AGENTSTREAM_HTTP_PORT=9100
# Installed from the builder's wheels through a bind mount: no wheel stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels "agentstream[postgres,tracing,services]" \
    && groupadd --system --gid 10001 agentstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/agentstream \
       --shell /usr/sbin/nologin agentstream \
    && install -d -o 10001 -g 10001 /var/lib/agentstream
# The working directory is the only writable place the image needs (the SQLite default store).
WORKDIR /var/lib/agentstream
USER 10001:10001
EXPOSE 9100
# /healthz of the service in this container, on AGENTSTREAM_HTTP_PORT (slim images have no curl).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGENTSTREAM_HTTP_PORT', '9100'), timeout=4)"]
ENTRYPOINT ["agentstream"]
CMD ["consume", "--list"]

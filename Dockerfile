# syntax=docker/dockerfile:1
# The Dramaverse server: python:3.11-slim, the package in a virtualenv, a non-root user.
# docker-compose.yml runs it with PostgreSQL and Redis; docs/scaling.md explains the settings.
#
#   docker build -t dramaverse .
#   docker run --rm -e JWT_SECRET=... -e DATABASE_URL=postgresql://... -e REDIS_URL=redis://... \
#       -e WORKERS=2 -p 3001:3001 dramaverse

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/dramaverse
WORKDIR /src
# Only what the package needs (README.md is its long description); tests and benchmarks stay out.
COPY pyproject.toml README.md ./
COPY dramaverse ./dramaverse
RUN /opt/dramaverse/bin/pip install .

FROM python:3.11-slim
# Production mode refuses to start without JWT_SECRET (no development secret on disk). The data
# directory only matters for SQLite; with PostgreSQL nothing is written there. Worker sockets
# (docs/scaling.md) live in /run/dramaverse, a short path inside the container.
ENV PATH=/opt/dramaverse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRAMAVERSE_ENV=production \
    DRAMAVERSE_DATA_DIR=/var/lib/dramaverse \
    WORKER_SOCKET_DIR=/run/dramaverse \
    HOST=0.0.0.0 \
    PORT=3001
RUN groupadd --system --gid 10001 dramaverse \
    && useradd --system --uid 10001 --gid dramaverse --no-create-home \
        --home-dir /var/lib/dramaverse --shell /usr/sbin/nologin dramaverse \
    && install -d -o dramaverse -g dramaverse -m 0700 /var/lib/dramaverse /run/dramaverse
COPY --from=build /opt/dramaverse /opt/dramaverse
USER dramaverse:dramaverse
WORKDIR /var/lib/dramaverse
EXPOSE 3001
# 200 while the process serves, also while Redis is unreachable ("status":"degraded"): it still
# serves its own clients. Any other answer, or none within 3 s, counts as a failure.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ.get('PORT', '3001'), timeout=2)" || exit 1
# SIGTERM: sockets are told to reconnect (1001), requests drain for SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
# `serve` applies pending migrations once (in the supervisor, before any worker starts), then
# runs WORKERS worker processes on PORT.
CMD ["dramaverse", "serve"]

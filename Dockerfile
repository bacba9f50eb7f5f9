# The WebSocket service image. BASE_IMAGE defaults to the official slim Python image; where it
# cannot be pulled, scripts/images.sh passes the local Debian-built base instead.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHON=/opt/venv/bin/python \
    PROMETHEUS_MULTIPROC_DIR=/tmp/wsapp-metrics \
    PORT=8000

RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# An unprivileged user, and no setuid or setgid programs left to regain root with (the stack also
# drops every capability and mounts the root filesystem read-only).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
 && find / -xdev -perm /6000 -type f -exec chmod a-s {} +
COPY entrypoint.sh /app/entrypoint.sh
COPY service /app/service
WORKDIR /app/service

ARG APP_VERSION=dev
ENV APP_VERSION=${APP_VERSION}
USER app
EXPOSE 8000
# Healthy = ready, or deliberately draining (a draining replica must not be killed by Swarm).
# Generous for a slow machine: a replica is replaced only after about a minute without an answer
# (the same as stack/app.yml, which is what Swarm runs; see the comment there).
HEALTHCHECK --interval=3s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-m", "rooms.ctl", "probe", "--timeout", "8"]
ENTRYPOINT ["/app/entrypoint.sh"]

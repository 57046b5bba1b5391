# smtpguard container image.
#
#   docker build -t smtpguard .
#   docker run --rm --read-only --tmpfs /tmp -p 25:2525 -p 9108:9108 \
#     -e SMTPGUARD_UPSTREAM=smtp://mta.example.internal:25 smtpguard
#   docker run ... -v "$PWD/conf:/etc/smtpguard/conf:ro" smtpguard serve --config /etc/smtpguard/conf/smtpguard.yaml
#
# PID 1: smtpguard installs its own SIGTERM/SIGHUP handlers (SIGTERM drains: stop accepting,
# 421 4.3.2 to idle sessions, DATA finishes within shutdown_grace), and it starts no child
# processes, so no init is needed for signals or zombie reaping. `docker run --init` / `podman
# run --init` (tini/catatonit) is harmless if you prefer one; Kubernetes sends SIGTERM to PID 1.
#
# Pin harder for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11.X-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/smtpguard
COPY pyproject.toml README.md ./
COPY smtpguard ./smtpguard
# (the built-in default policy is package data: smtpguard/defaults/policies/default.yaml,
# which policies/default.yaml links to)
RUN /opt/smtpguard/bin/pip install --no-cache-dir . \
    && /opt/smtpguard/bin/python -m compileall -q /opt/smtpguard/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="smtpguard" \
      org.opencontainers.image.description="SMTP policy proxy in front of a real MTA" \
      org.opencontainers.image.licenses="MIT"
# The image's default config listens on all interfaces (the built-in default is 127.0.0.1) and,
# until SMTPGUARD_UPSTREAM=smtp://HOST:PORT is set, delivers into a Maildir under /tmp.
RUN groupadd --gid 10001 smtpguard \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin smtpguard \
    && mkdir -p /etc/smtpguard \
    && printf '%s\n' \
       '# smtpguard image default -- mount your own file and pass --config, see docs/' \
       'listeners:' \
       '  - name: mx' \
       '    address: 0.0.0.0:2525' \
       'metrics:' \
       '  listen: 0.0.0.0:9108' \
       'upstream:' \
       '  url: maildir:/tmp/smtpguard-mail' \
       > /etc/smtpguard/smtpguard.yaml
COPY --from=build /opt/smtpguard /opt/smtpguard
ENV PATH=/opt/smtpguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Runs as a non-root uid; the image works with a read-only root filesystem (/tmp writable only).
USER 10001:10001
# 2525 SMTP (map 25 -> 2525 outside: no NET_BIND_SERVICE needed), 9108 /metrics /healthz /readyz
EXPOSE 2525 9108
STOPSIGNAL SIGTERM
# No curl in slim images: probe /healthz with the interpreter that is already there.
# SMTPGUARD_METRICS (HOST:PORT) moves the probe along with the metrics listener.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; p = os.environ.get('SMTPGUARD_METRICS', ':9108').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"]
ENTRYPOINT ["smtpguard"]
CMD ["serve", "--config", "/etc/smtpguard/smtpguard.yaml"]

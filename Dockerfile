# One image for `sessionflow serve`, `sessionflow worker` and `sessionflow token create`:
#   docker run IMAGE serve --no-worker | docker run IMAGE worker | docker run IMAGE token create --owner me
# BASE_IMAGE is any Debian bookworm. docker/build-images.sh passes a root made with debootstrap
# (python3 and python3-venv already in it), for machines that reach no image registry; a stock
# debian image gets python3 from apt below.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM base AS builder
# The build downloads from PyPI, through whatever CA the building machine trusts (an
# intercepting proxy's): docker/build-ca/ holds it at build time only; the final stage never
# copies it.
COPY docker/build-ca/ /tmp/build-ca/
RUN cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.crt \
    && find /tmp/build-ca -name '*.crt' -exec cat {} + >> /tmp/ca.crt
ENV SSL_CERT_FILE=/tmp/ca.crt \
    PIP_CERT=/tmp/ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/sessionflow \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_NO_PROGRESS=1
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv==0.13.9
WORKDIR /src
# Dependencies first: a change to the code alone reuses this layer.
COPY pyproject.toml uv.lock ./
RUN /opt/uv/bin/uv sync --locked --no-dev --extra s3 --no-install-project
COPY README.md ./
COPY sessionflow ./sessionflow
COPY sql ./sql
RUN /opt/uv/bin/uv sync --locked --no-dev --extra s3 --no-editable

FROM base
# No useradd in a minbase root: the user is two lines.
RUN echo 'sessionflow:x:10001:10001:sessionflow:/home/sessionflow:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'sessionflow:x:10001:' >> /etc/group \
    && mkdir -p /home/sessionflow /data \
    && chown 10001:10001 /home/sessionflow /data
COPY --from=builder /opt/sessionflow /opt/sessionflow
ENV PATH=/opt/sessionflow/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/sessionflow \
    PYTHONUNBUFFERED=1 \
    SESSIONFLOW_HOST=0.0.0.0 \
    SESSIONFLOW_PORT=8000 \
    SESSIONFLOW_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/sessionflow
EXPOSE 8000
ENTRYPOINT ["sessionflow"]
CMD ["serve"]

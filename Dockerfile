# syntax=docker/dockerfile:1
# agentgate container image.
#   builder: builds the agentgate wheel plus wheels for its runtime dependencies
#   runtime: python slim + those wheels only (no dev deps, no compilers), runs as non-root
# Build from the repo root: docker build -t agentgate .

FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="agentgate" \
      org.opencontainers.image.description="mTLS-terminating policy enforcement gateway for AI-agent domains" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 agentgate \
    && useradd --system --uid 10001 --gid agentgate --home-dir /var/lib/agentgate \
        --create-home --shell /usr/sbin/nologin agentgate \
    && mkdir -p /etc/agentgate
# Install from the builder's wheels only (no index): exactly what was built, nothing else.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/agentgate-*.whl
# Default Rego policies, for configs that point pdp.policies at /usr/share/agentgate/policies.
COPY policies/ /usr/share/agentgate/policies/

WORKDIR /var/lib/agentgate
USER 10001:10001
# 8443: HTTPS/mTLS listener; 9901: admin (/healthz /readyz /metrics).
EXPOSE 8443 9901
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentgate"]
CMD ["run", "-c", "/etc/agentgate/gateway.yaml"]

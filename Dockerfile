# The platform image: one image, every process (`cdp api`, `cdp worker --role ...`, `cdp run`).
# Multi-stage: build the wheel and its dependencies in a full image, run in a slim one as a
# non-root user. docs/operations.md says what was checked here (no Docker engine was available).
FROM node:22-bookworm-slim AS assets
# The console's chart and YAML libraries, pinned by its lock file (served by the API, never a CDN).
WORKDIR /assets
COPY console/vendor/package.json console/vendor/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/cdp
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY runtime runtime
COPY ingest ingest
COPY identity identity
COPY profiles profiles
COPY tagging tagging
COPY segments segments
COPY sinks sinks
COPY stream stream
COPY privacy privacy
COPY console console
COPY --from=assets /assets/node_modules console/vendor/node_modules
COPY care care
COPY deploy deploy
RUN /opt/cdp/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 cdp \
    && useradd --system --uid 10001 --gid cdp --home-dir /var/lib/cdp --create-home cdp
COPY --from=build /opt/cdp /opt/cdp
ENV PATH=/opt/cdp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib/cdp \
    CDP_LOG_JSON=true \
    CDP_API__HOST=0.0.0.0 \
    CDP_METRICS__HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/cdp
# 8088: the API (and its /metrics); 9108: a worker's metrics and consumer lag.
EXPOSE 8088 9108
ENTRYPOINT ["cdp"]
CMD ["api"]

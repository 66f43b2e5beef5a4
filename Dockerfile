# syntax=docker/dockerfile:1
# lemondata-exporter: docker build -t lemondata-exporter .
#
# The build stage turns the project and its dependencies, at the exact
# versions in constraints.txt, into wheels; the final stage installs them
# without a compiler, a cache or the sources.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="lemondata-exporter" \
      org.opencontainers.image.description="Prometheus exporter for asynchronous generation tasks on the LemonData API" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/lemondata_exporter-*.whl \
    && groupadd --system --gid 10001 exporter \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /var/lib/lemondata-exporter --create-home --shell /usr/sbin/nologin exporter
# The store (store.path, default lemondata-exporter.db) and a config.yaml given
# without --config.file live in the working directory.
WORKDIR /var/lib/lemondata-exporter
USER 10001:10001
EXPOSE 9847
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9847/-/healthy', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["lemondata-exporter"]
CMD ["run"]

# realtime: one instance. Embedded SQLite by default (data in /app/data);
# set REALTIME_STORAGE_DSN=postgresql://... and REALTIME_BROKER_URL=redis://... to cluster.
# Pinned to a patch release (and its Debian release): a rebuild gets the same interpreter.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REALTIME_SERVER_HOST=0.0.0.0 \
    REALTIME_SERVER_PORT=8080

WORKDIR /app
# The pinned dependencies first: this layer changes only with requirements.txt.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --system --uid 10001 --home-dir /app realtime \
    && mkdir -p /app/data && chown realtime /app/data

# Then the package itself (the `realtime` and `realtime-loadtest` commands), on those pins.
COPY pyproject.toml README.md /tmp/src/
COPY protocol /tmp/src/protocol
COPY storage /tmp/src/storage
COPY realtime /tmp/src/realtime
COPY loadtest /tmp/src/loadtest
RUN pip install --no-cache-dir --no-deps /tmp/src && rm -rf /tmp/src

COPY config.toml .

USER realtime
EXPOSE 8080
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALTIME_SERVER_PORT', '8080'), timeout=2)"
# SIGTERM drains: clients are closed with 1012 and reconnect elsewhere.
STOPSIGNAL SIGTERM
CMD ["realtime", "serve", "--config", "config.toml"]

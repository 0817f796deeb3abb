# realtime: one instance. Embedded SQLite by default (data in /app/data);
# set REALTIME_STORAGE_DSN=postgresql://... and REALTIME_BROKER_URL=redis://... to cluster.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REALTIME_SERVER_HOST=0.0.0.0 \
    REALTIME_SERVER_PORT=8080

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --system --uid 10001 --home-dir /app realtime \
    && mkdir -p /app/data && chown realtime /app/data

COPY config.toml .
COPY protocol protocol
COPY storage storage
COPY realtime realtime

USER realtime
EXPOSE 8080
VOLUME ["/app/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('REALTIME_SERVER_PORT', '8080'), timeout=2)"
# SIGTERM drains: clients are closed with 1012 and reconnect elsewhere.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "realtime", "serve", "--config", "config.toml"]

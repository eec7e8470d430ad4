# realtime-bridge: one slim image for Railway (railway.toml builds it) and any
# other container host.
#
#   docker build -t realtime-bridge .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql://... realtime-bridge
#
# Without DATABASE_URL the bridge starts its embedded Postgres in /data
# (fine for a demo; mount a volume there to keep it, or better, use a real
# database in production).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first (its own layer, rebuilt only when the code changes).
# README.md and LICENSE are part of the package metadata; the SQL
# migrations and the demo schema ship inside the package
# (realtime_bridge/migrations and realtime_bridge/demo link to supabase/migrations
# and supabase/demo, so they must be here before the build). MIGRATIONS_DIR
# below points at the same files. The Python client's package (clients/python)
# is part of the server's too.
COPY pyproject.toml README.md LICENSE ./
COPY supabase/migrations ./supabase/migrations
COPY supabase/demo ./supabase/demo
COPY clients/python/src ./clients/python/src
COPY realtime_bridge ./realtime_bridge
RUN pip install . \
    && rm -rf build realtime_bridge.egg-info

# What the installed package does not carry: the bundled plugins.
COPY plugins ./plugins

RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /data \
    && chown app:app /data

ENV HOST=0.0.0.0 \
    PORT=8000 \
    PLUGIN_PATHS=/app/plugins \
    MIGRATIONS_DIR=/app/supabase/migrations \
    DATA_DIR=/data

USER app

EXPOSE 8000

# /health answers 200 only while the source is connected; urlopen raises
# on 503, so the check fails then too. No curl in the slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

# A shell, so that $PORT (set by Railway and most hosts) is expanded; `exec`
# so that the bridge, not the shell, receives SIGTERM and shuts down cleanly.
CMD ["/bin/sh", "-c", "exec realtime-bridge serve --host 0.0.0.0 --port $PORT"]

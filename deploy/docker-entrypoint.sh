#!/bin/sh
# The image's entrypoint (Dockerfile; README "Running several instances"). No make: the steps
# of `make run` by hand.
#   setup  migrate, load the price table, make the admin (ADMIN_USERNAME / ADMIN_PASSWORD);
#          run once per release, by one container (docker-compose.yml's `setup`)
#   serve  serve on 0.0.0.0:$PORT with $WEB_CONCURRENCY workers (the instances)
#   start  setup, then serve (one container alone; the default)
# Anything else is run as given: `docker compose run --rm setup python manage.py create_api_key alice`.
set -eu

setup() {
    python manage.py migrate --noinput
    python manage.py load_prices
    python manage.py ensure_admin
}

serve() {
    # exec: the server becomes PID 1 and gets `docker stop`'s SIGTERM itself (open streams
    # then get PROXY_SHUTDOWN_GRACE_SECONDS to finish).
    exec python manage.py serve --host 0.0.0.0 --port "${PORT:-8000}" --workers "${WEB_CONCURRENCY:-2}"
}

case "${1:-start}" in
    setup) setup ;;
    serve) serve ;;
    start) setup && serve ;;
    *) exec "$@" ;;
esac

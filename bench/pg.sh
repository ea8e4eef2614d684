#!/usr/bin/env bash
# pgbench through hoopy vs direct vs PgBouncer (see bench/pg.py).
exec python3 "$(dirname "$0")/pg.py" "$@"

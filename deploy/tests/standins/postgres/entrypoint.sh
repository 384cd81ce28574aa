#!/bin/sh
# What the official image's entrypoint does for cubelab: a cluster with superuser postgres whose password is
# $POSTGRES_PASSWORD, password logins from the network. Started as root (docker compose), it prepares the data
# folder and runs the server as the postgres user; started as that user (Kubernetes' runAsUser), it runs as is.
set -e
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$PGDATA"
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PGDATA" /var/run/postgresql; fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  umask 077
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  if [ "$(id -u)" = 0 ]; then chown postgres "$pw"; fi
  as_postgres initdb -U postgres --pwfile="$pw" -D "$PGDATA" > /dev/null
  rm "$pw"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
if [ "$(id -u)" = 0 ]; then exec runuser -u postgres -- postgres -D "$PGDATA"; fi
exec postgres -D "$PGDATA"

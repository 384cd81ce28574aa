#!/bin/sh
# What the official image's entrypoint does for cubelab: a cluster with superuser postgres whose password is
# $POSTGRES_PASSWORD, password logins from the network, the server running as the postgres user.
set -e
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pw
  chown postgres /tmp/pw
  runuser -u postgres -- initdb -U postgres --pwfile=/tmp/pw -D "$PGDATA" > /dev/null
  rm /tmp/pw
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec runuser -u postgres -- postgres -D "$PGDATA"

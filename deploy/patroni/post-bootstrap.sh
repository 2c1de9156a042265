#!/bin/sh
# Patroni's post_bootstrap hook: run once, as the PostgreSQL OS user, on the node that
# initialised the cluster, with a superuser connection string as $1. Makes the netpacs
# role (password from PG_NETPACS_PASSWORD) and its database; netpacs makes its tables
# itself (migrations on `netpacs serve`).
set -eu
: "${PG_NETPACS_PASSWORD:?PG_NETPACS_PASSWORD must be set}"
psql "$1" -v ON_ERROR_STOP=1 -v pw="$PG_NETPACS_PASSWORD" <<'SQL'
CREATE ROLE netpacs LOGIN PASSWORD :'pw';
CREATE DATABASE netpacs OWNER netpacs;
SQL

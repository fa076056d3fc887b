#!/bin/sh
# Run once by the postgres image when it initialises an empty data directory (as the postgres user).
#
# Creates the ledger's two roles from the database URLs the ltu services use, so names and passwords
# live in one place: the migration role (ltu_owner_database_url) owns the database and its public
# schema and runs `ltu migrate --app-role ...`; the application role (ltu_app_database_url) may only
# connect. `ltu migrate --app-role` then grants it exactly what the API and workers need (README,
# "Deployment: database roles"). Passwords must be URL-safe as written (hex: `openssl rand -hex 32`).
set -eu

secrets=${LTU_SECRETS_DIR:-/run/ltu-secrets}

url_part() {  # url_part FILE user|password
    url=$(cat "$secrets/$1")
    case $2 in
        user) expression='s#^[a-z+]+://([^:@/]+):.*$#\1#' ;;
        password) expression='s#^[a-z+]+://[^:@/]+:([^@]*)@.*$#\1#' ;;
    esac
    value=$(printf '%s\n' "$url" | sed -E "$expression")
    if [ "$value" = "$url" ] || [ -z "$value" ]; then
        echo "10-ltu-roles.sh: $1 must read postgresql+psycopg://USER:PASSWORD@postgres:5432/DB" >&2
        exit 1
    fi
    printf '%s' "$value"
}

LTU_OWNER=$(url_part ltu_owner_database_url user)
LTU_OWNER_PASSWORD=$(url_part ltu_owner_database_url password)
LTU_APP=$(url_part ltu_app_database_url user)
LTU_APP_PASSWORD=$(url_part ltu_app_database_url password)
LTU_DB=${POSTGRES_DB:-ltu}
export LTU_OWNER LTU_OWNER_PASSWORD LTU_APP LTU_APP_PASSWORD LTU_DB

# \getenv keeps the passwords off psql's command line (ps shows that).
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "$LTU_DB" <<'SQL'
\getenv owner LTU_OWNER
\getenv owner_password LTU_OWNER_PASSWORD
\getenv app LTU_APP
\getenv app_password LTU_APP_PASSWORD
\getenv db LTU_DB
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN PASSWORD :'app_password';
ALTER DATABASE :"db" OWNER TO :"owner";
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
SQL

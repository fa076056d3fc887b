#!/bin/sh
# Entrypoint of the ltu image (and of the compose file's postgres service): makes file secrets readable
# by the service's user, then runs the command as that user.
#
# Docker Compose bind-mounts a file secret with the host file's owner and mode and ignores a secret's
# uid/gid/mode for file sources (docker/compose#9648), so a key written by `openssl genpkey` (mode
# 0600, owned by the operator) is unreadable by uid 10001. Started as root, this copies every file of
# $LTU_SECRETS_SOURCE (/run/secrets) into $LTU_SECRETS_DIR (/run/ltu-secrets, a tmpfs in the compose
# file), owned by $LTU_RUN_AS (ltu) with mode 0400, and drops to that user. Started as any other user
# (Kubernetes, `docker run --user`), it runs the command unchanged: the secrets must then be readable
# by that user already.
set -eu

[ "$(id -u)" = 0 ] || exec "$@"

user=${LTU_RUN_AS:-ltu}
source=${LTU_SECRETS_SOURCE:-/run/secrets}
target=${LTU_SECRETS_DIR:-/run/ltu-secrets}
group=$(id -g "$user")

mkdir -p "$target"
chown "$user:$group" "$target"
chmod 0700 "$target"
for secret in "$source"/*; do
    [ -f "$secret" ] || continue
    install -o "$user" -g "$group" -m 0400 "$secret" "$target/${secret##*/}"
done

exec setpriv --reuid="$user" --regid="$group" --clear-groups -- "$@"

#!/bin/sh
# The nginx image's entrypoint contract, for the Debian stand-in (stand-in.sh): before
# `nginx ...` it sources /docker-entrypoint.d/*.envsh, runs /docker-entrypoint.d/*.sh, then
# renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with envsubst, filling in
# only the variables whose names match NGINX_ENVSUBST_FILTER.
set -eu
if [ "${1:-}" = nginx ]; then
  for f in $(find /docker-entrypoint.d -type f | sort -V); do
    case "$f" in
      *.envsh) [ -x "$f" ] && . "$f" ;;
      *.sh) [ -x "$f" ] && "$f" ;;
    esac
  done
  names=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) if (name ~ /${NGINX_ENVSUBST_FILTER:-}/) print name }" </dev/null))
  for template in /etc/nginx/templates/*.template; do
    [ -f "$template" ] || continue
    out="/etc/nginx/conf.d/$(basename "$template" .template)"
    echo "$0: Running envsubst on $template to $out"
    envsubst "$names" <"$template" >"$out"
  done
fi
exec "$@"

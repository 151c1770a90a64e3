#!/usr/bin/env bash
# A stand-in for a registry base image, made from the Debian mirror, for machines that reach
# Debian's package mirror but not the container registry. Only the test suite calls this, and
# only after `podman pull NAME` failed (tests/container/engine.py).
#
#   scripts/container/stand-in.sh python|nginx NAME WORKDIR
#
# python: Debian bookworm's Python 3.11 with venv and `python` on PATH, as python:3.11-slim has.
# nginx:  Debian testing's nginx (1.27.3+, for `resolve`) dressed as the nginx image: its
#         entrypoint runs /docker-entrypoint.d/ and renders /etc/nginx/templates/ with envsubst.
set -euo pipefail
kind=$1 name=$2 work=$3
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root="$work/rootfs-$kind"
rm -rf "$root"
mkdir -p "$work"

case "$kind" in
python)
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >"$work/debootstrap-$kind.log"
  changes=(--change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
  ;;
nginx)
  debootstrap --variant=minbase --include=nginx,gettext-base,wget \
    testing "$root" "$mirror" >"$work/debootstrap-$kind.log"
  rm -f "$root/etc/nginx/sites-enabled/default"
  mkdir -p "$root/docker-entrypoint.d" "$root/etc/nginx/templates"
  ln -sf /dev/stdout "$root/var/log/nginx/access.log"
  ln -sf /dev/stderr "$root/var/log/nginx/error.log"
  install -m 755 "$(dirname "$0")/nginx-entrypoint.sh" "$root/docker-entrypoint.sh"
  changes=(--change 'ENTRYPOINT ["/docker-entrypoint.sh"]' --change 'CMD ["nginx", "-g", "daemon off;"]'
           --change 'STOPSIGNAL SIGQUIT' --change 'EXPOSE 80')
  ;;
*)
  echo "stand-in: unknown kind $kind (python or nginx)" >&2
  exit 2
  ;;
esac

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import "${changes[@]}" \
  --change "LABEL vaeserve.stand-in=debootstrap-$kind" --message "stand-in for $name" - "$name" >/dev/null
rm -rf "$root"

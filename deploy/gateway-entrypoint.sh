#!/bin/sh
# The gateway's start, before the nginx image's own entrypoint (docker-compose.yml). Two things
# that differ between container engines:
# 1. The DNS server nginx asks for the replicas' addresses: VAE_GATEWAY_RESOLVER, else the
#    container's own, the first nameserver in /etc/resolv.conf (Docker's embedded 127.0.0.11,
#    podman's aardvark-dns on the network's gateway address, ...).
# 2. A wait, bounded, for a ready replica (`/readyz` answers 200), so the gateway opens its port
#    with somewhere to send requests, also under engines that ignore compose's
#    `depends_on: condition: service_healthy` (podman-compose).
set -eu

if [ -z "${VAE_GATEWAY_RESOLVER:-}" ]; then
  VAE_GATEWAY_RESOLVER=$(awk '$1 == "nameserver" { print ($2 ~ /:/) ? "[" $2 "]" : $2; exit }' /etc/resolv.conf)
fi
export VAE_GATEWAY_RESOLVER
echo "$0: resolver $VAE_GATEWAY_RESOLVER"

# Twice the image's health check start period: replicas load their models within it.
wait_s=120
servers=$(printf '%s\n' "${VAE_UPSTREAM_SERVERS:-}" | tr ';' '\n' | awk '$1 == "server" { print $2 }')
waited=0
while [ -n "$servers" ]; do
  for server in $servers; do
    if wget -q -T 2 -O /dev/null "http://$server/readyz" 2>/dev/null; then
      echo "$0: $server is ready after ${waited}s"
      servers=""
      break
    fi
  done
  [ -n "$servers" ] || break
  if [ "$waited" -ge "$wait_s" ]; then
    echo "$0: no replica ready after ${wait_s}s; starting anyway (502 until one is)"
    break
  fi
  sleep 1
  waited=$((waited + 1))
done

exec /docker-entrypoint.sh "$@"

#!/bin/bash
# Healthy when a replica answers /healthz through the proxy (no curl in the image: bash's
# /dev/tcp is enough for one HTTP/1.0 request).
exec 3<>/dev/tcp/127.0.0.1/8080
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r status <&3
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
    *) echo "proxy: $status" >&2; exit 1 ;;
esac

#!/bin/sh
# Docker answers DNS on 127.0.0.11 in every container of a user-defined network, and
# docker/nginx.conf relies on it (`resolver 127.0.0.11`). Podman's DNS (aardvark-dns) answers on
# the network's gateway instead, the address in /etc/resolv.conf: forward 127.0.0.11:53 there,
# so the project's nginx config runs unchanged. (The official image needs none of this.)
set -e
nameserver=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
if [ -n "$nameserver" ] && [ "$nameserver" != 127.0.0.11 ]; then
    socat -T5 UDP4-RECVFROM:53,bind=127.0.0.11,fork "UDP4-SENDTO:$nameserver:53" &
fi
exec "$@"

#!/bin/sh
# Entrypoint of the compose stack's Redis: render redis.conf with the password from the
# environment, then start redis-server on that file. The password never reaches an argv
# (`ps` shows argv to every user of the host; `--requirepass` did), only a 0600 file in a tmpfs.
#
#   entrypoint: recstack-redis-entrypoint    command: redis-server [--option value ...]
#
# Environment: REDIS_PASSWORD (required, letters, digits, "-" and "_"; see .env.example);
# RECSTACK_REDIS_BASE_CONF, the committed settings (default /usr/local/etc/redis/recstack.conf);
# RECSTACK_REDIS_RUN_DIR, where the rendered file goes (default /run/recstack-redis, a tmpfs).
set -eu

base_conf=${RECSTACK_REDIS_BASE_CONF:-/usr/local/etc/redis/recstack.conf}
run_dir=${RECSTACK_REDIS_RUN_DIR:-/run/recstack-redis}
conf="$run_dir/redis.conf"

password=${REDIS_PASSWORD:-}
if [ -z "$password" ]; then
    echo "recstack-redis-entrypoint: REDIS_PASSWORD is empty; set it in .env" >&2
    exit 64
fi
case "$password" in
    *[!A-Za-z0-9_-]*)
        echo "recstack-redis-entrypoint: REDIS_PASSWORD may hold only letters, digits, - and _" >&2
        exit 64 ;;
esac
if [ ! -r "$base_conf" ]; then
    echo "recstack-redis-entrypoint: cannot read $base_conf" >&2
    exit 66
fi

mkdir -p "$run_dir"
umask 077
tmp="$conf.tmp.$$"
printf 'include %s\nrequirepass "%s"\n' "$base_conf" "$password" > "$tmp"
mv "$tmp" "$conf"
unset password REDIS_PASSWORD REDISCLI_AUTH  # redis-server needs the file only
# The image's entrypoint drops to the redis user: let it read the file it is started on.
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
    chown redis "$run_dir" "$conf"
fi

# redis-server reads a config file only as its first argument; options after it override.
if [ "${1:-}" = redis-server ]; then
    shift
fi
set -- redis-server "$conf" "$@"
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
    exec docker-entrypoint.sh "$@"  # the image's: owns /data, runs the server as user redis
fi
exec "$@"

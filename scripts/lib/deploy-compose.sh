# shellcheck shell=bash
# Deploy driver "compose": the EC2 host, running docker-compose.yml + docker-compose.prod.yml
# from this checkout with its .env and secrets/. The colors are the services api-blue and
# api-green, `api` is the migration job and `web` is nginx.

compose() {
    docker compose --project-directory "$DEPLOY_ROOT" \
        -f "$DEPLOY_ROOT/docker-compose.yml" -f "$DEPLOY_ROOT/docker-compose.prod.yml" "$@"
}

# The running container of a service, if any.
compose_container() {
    compose ps -q "$1" 2>/dev/null
}

# Tags name commits and never move, so an image the host has already is not fetched again
# (and a host can deploy an image loaded without a registry).
driver_prepare() {
    echo "pulling $1 (unless the host has it)"
    IMAGE_TAG="$1" compose pull --quiet --policy missing api web
    compose up -d --wait db
    compose up -d --no-deps backup
}

driver_migrate() {
    IMAGE_TAG="$1" compose run --rm --no-deps api
}

driver_start() {
    IMAGE_TAG="$2" compose up -d --no-deps --force-recreate "api-$1"
}

driver_status() {
    local id
    id="$(compose_container "api-$1")"
    if [[ -z "$id" ]]; then
        echo down
        return
    fi
    case "$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" in
    running/healthy) echo healthy ;;
    running/*) echo starting ;;
    # exited, dead, or restarting after a crash
    *) echo down ;;
    esac
}

# The API image ships its migrations' folder for this (docker/api.Dockerfile).
driver_migrations() {
    local image
    image="$(IMAGE_TAG="$1" compose config --images | grep '/messages-api:' | sort -u)"
    docker run --rm --network none --entrypoint /bin/ls "$image" /usr/share/messages/migrations/mysql
}

# The database is reached inside its container, as root: the root password goes from the
# container's secret into an option file on its tmpfs, never onto a command line.
compose_db_client() {
    # shellcheck disable=SC2016 # expanded by the container's shell
    compose exec -T db sh -c 'umask 077 &&
        printf "[client]\nuser=root\npassword=\"%s\"\n" "$(cat /run/secrets/db_root_password)" >/tmp/restore.cnf &&
        exec "$0" --defaults-extra-file=/tmp/restore.cnf "$@"' "$@"
}

driver_db_open() {
    :
}

driver_db_close() {
    :
}

driver_db_name() {
    compose exec -T db printenv MYSQL_DATABASE
}

driver_sql() {
    compose_db_client mysql "$@"
}

driver_dump() {
    compose_db_client mysqldump "$@"
}

driver_upstream() {
    echo "api-$1:8080"
}

# Docker sends SIGTERM and waits stop_grace_period before it kills.
driver_stop() {
    compose stop "api-$1"
}

# The web container renders the recorded upstream when it starts, and nginx-reload renders
# it again in a running one.
driver_proxy_apply() {
    if [[ -n "$(compose_container web)" ]]; then
        compose exec -T web nginx-reload
    else
        IMAGE_TAG="$DEPLOY_TAG" compose up -d --no-deps --wait web
    fi
}

# nginx's master is the web container's pid 1; its children are the workers (read from
# /proc: the nginx image has no pgrep).
driver_proxy_workers() {
    compose exec -T web cat /proc/1/task/1/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# With NGINX_TLS=on in .env the plain port only redirects, so the smoke test goes through
# HTTPS (scripts/smoke-test does not verify a loopback address's certificate, which names
# the public domain, or is still the placeholder before the first one is issued).
driver_proxy_url() {
    local published
    if [[ "$(sed -n 's/^NGINX_TLS=//p' "$DEPLOY_ROOT/.env" 2>/dev/null | tail -n 1)" == on ]]; then
        published="$(compose port web 8443)"
        echo "https://127.0.0.1:${published##*:}"
    else
        published="$(compose port web 8080)"
        echo "http://127.0.0.1:${published##*:}"
    fi
}

web_content() {
    docker image inspect -f '{{index .Config.Labels "io.github.two-tier-rs.messages.web-content"}}' "$1"
}

driver_finish() {
    local tag="$1" env_file="$DEPLOY_ROOT/.env" new_web running_web
    echo "recording IMAGE_TAG=$tag in $env_file"
    if grep -q '^IMAGE_TAG=' "$env_file"; then
        sed -i "s/^IMAGE_TAG=.*/IMAGE_TAG=$tag/" "$env_file"
    else
        echo "IMAGE_TAG=$tag" >>"$env_file"
    fi
    # Recreating nginx drops its connections for a moment, so it happens only when the
    # frontend or the proxy config changed (scripts/images labels the web image with a hash
    # of both); API-only releases keep nginx running.
    new_web="$(compose config --images | grep '/messages-web:')"
    running_web="$(docker inspect -f '{{.Image}}' "$(compose_container web)")"
    if [[ "$(web_content "$new_web")" == "$(web_content "$running_web")" ]]; then
        echo "web: frontend and proxy config unchanged; nginx keeps running"
    else
        echo "web: frontend or proxy config changed; recreating nginx"
        compose up -d --no-deps --wait web
    fi
}

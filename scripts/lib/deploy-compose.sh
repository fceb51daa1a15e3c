# shellcheck shell=bash
# Deploy driver "compose": the EC2 host, running docker-compose.yml + docker-compose.prod.yml
# from DEPLOY_DIR with its .env and secrets/. The colors are the services api-blue and
# api-green, `api` is the migration job and `web` is nginx. The compose project is named
# by DEPLOY_DIR (or COMPOSE_PROJECT_NAME in its .env), the same for every release.
#
#   DEPLOY_PULL   always (default): pull TAG's images every time, so a tag pushed again is
#                 what runs; never: use the images the engine has (an engine without a
#                 registry, as in the container tests)
#   DEPLOY_UPDATE_DB  1 (scripts/deploy --update-db): recreate the database when its
#                 definition changed, after a backup; otherwise such a deploy is refused

compose() {
    docker compose --project-directory "$DEPLOY_ROOT" \
        -f "$DEPLOY_ROOT/docker-compose.yml" -f "$DEPLOY_ROOT/docker-compose.prod.yml" "$@"
}

# The running container of a service, if any.
compose_container() {
    compose ps -q "$1" 2>/dev/null
}

driver_prepare() {
    local image
    case "${DEPLOY_PULL:-always}" in
    always)
        echo "pulling $1"
        IMAGE_TAG="$1" compose pull --quiet api web
        ;;
    never) echo "DEPLOY_PULL=never: using the images this engine has" ;;
    *)
        echo "DEPLOY_PULL must be always or never, not '$DEPLOY_PULL'" >&2
        return 1
        ;;
    esac
    for image in $(IMAGE_TAG="$1" compose config --images api web | sort -u); do
        echo "$image is $(docker image inspect -f '{{.Id}} {{join .RepoDigests " "}}' "$image")"
    done
    compose_db_unchanged
}

# A deploy never recreates the database: a running db is left alone when this release
# defines it as the running container was defined, and the deploy is refused otherwise,
# unless DEPLOY_UPDATE_DB asks for it (a backup first). A stopped one is started.
compose_db_unchanged() {
    local id running wanted
    id="$(compose_container db)"
    if [[ -z "$id" ]]; then
        compose up -d --no-recreate --wait db
        return
    fi
    running="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$id")"
    wanted="$(compose config --hash db | awk '{print $2}')"
    if [[ "$running" == "$wanted" ]]; then
        echo "db: definition unchanged; left running"
        compose up -d --no-recreate --wait db
    elif [[ "${DEPLOY_UPDATE_DB:-}" == 1 ]]; then
        echo "db: definition changed; backing up, then recreating it (--update-db)"
        compose run --rm --no-deps --entrypoint /opt/messages/scripts/backup backup
        compose up -d --no-deps --wait db
    else
        echo "refused: this release changes the database's definition (db), which a deploy never" \
            "recreates. Run scripts/deploy --update-db $DEPLOY_TAG on the host: it backs up the" \
            "database, recreates it (the API is unavailable meanwhile) and deploys." >&2
        return 1
    fi
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

# COLOR's address on the frontend network, which this machine reaches past nginx.
driver_color_url() {
    local ip
    ip="$(docker inspect -f '{{range $name, $net := .NetworkSettings.Networks}}{{$name}} {{$net.IPAddress}}{{"\n"}}{{end}}' \
        "$(compose_container "api-$1")" | awk '$1 ~ /_frontend$/ {print $2}')"
    echo "http://${ip:?api-$1 is on no frontend network}:8080"
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

driver_proxy_running() {
    [[ -n "$(compose ps -q --status running web 2>/dev/null)" ]]
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
    # The backup service runs the live release's scripts (and definition).
    compose up -d --no-deps backup
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
        # nginx-exporter shares web's network namespace (network_mode: service:web): it is
        # recreated with it, or it would be left in the old container's.
        if [[ -n "$(compose --profile monitoring ps -q nginx-exporter 2>/dev/null)" ]]; then
            compose --profile monitoring up -d --no-deps --force-recreate nginx-exporter
        fi
    fi
}

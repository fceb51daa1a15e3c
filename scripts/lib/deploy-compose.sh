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
    # The services of the project's images (binlog-archiver shares backup's).
    local image services=(api web backup)
    case "${DEPLOY_PULL:-always}" in
    always)
        echo "pulling $1"
        IMAGE_TAG="$1" compose pull --quiet "${services[@]}"
        ;;
    never) echo "DEPLOY_PULL=never: using the images this engine has" ;;
    *)
        echo "DEPLOY_PULL must be always or never, not '$DEPLOY_PULL'" >&2
        return 1
        ;;
    esac
    for image in $(IMAGE_TAG="$1" compose config --images "${services[@]}" | sort -u); do
        echo "$image is $(docker image inspect -f '{{.Id}}{{range .RepoDigests}} {{.}}{{end}}' "$image")"
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
        compose_backup_account
        return
    fi
    running="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$id")"
    wanted="$(compose config --hash db | awk '{print $2}')"
    if [[ "$running" == "$wanted" ]]; then
        echo "db: definition unchanged; left running"
        compose up -d --no-recreate --wait db
        compose_backup_account
    elif [[ "${DEPLOY_UPDATE_DB:-}" == 1 ]]; then
        echo "db: definition changed; backing up, then recreating it (--update-db)"
        compose_backup_account
        compose run --rm --no-deps --entrypoint /opt/messages/scripts/backup backup
        compose up -d --no-deps --wait db
    else
        echo "refused: this release changes the database's definition (db), which a deploy never" \
            "recreates. Run scripts/deploy --update-db $DEPLOY_TAG on the host: it backs up the" \
            "database, recreates it (the API is unavailable meanwhile) and deploys." >&2
        return 1
    fi
}

# The backup services' account, kept as this release defines it at every deploy: its
# password from secrets/db_backup_password, and the rights to dump the app's database
# (with the binary log position, which takes RELOAD), list, flush and read the binary logs,
# nothing else. Not written to the binary log: accounts are not the app's data.
compose_backup_account() {
    local file="$DEPLOY_ROOT/secrets/db_backup_password" password db
    if [[ ! -s "$file" ]]; then
        echo "$file is missing or empty: run scripts/prepare-host on this host (it generates the" \
            "backup account's password), then deploy again" >&2
        return 1
    fi
    password="$(<"$file")"
    # As a string literal: backslashes and quotes escaped.
    password="${password//\\/\\\\}" && password="${password//\'/\\\'}"
    db="$(driver_db_name)"
    echo "db: keeping the backup account"
    compose_db_client mysql --batch <<SQL
SET SESSION sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'backup'@'%' IDENTIFIED BY '$password';
ALTER USER 'backup'@'%' IDENTIFIED BY '$password';
GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES ON \`$db\`.* TO 'backup'@'%';
GRANT RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'backup'@'%';
SQL
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

# The backup services' S3 settings (docker-compose.prod.yml's x-backup-job) from the host's
# .env, for scripts/restore, which runs on the host: what the environment sets wins. The AWS
# CLI's credentials are secrets/backup_aws_credentials when it holds any, else its own
# chain (on EC2, the instance role).
driver_offsite_settings() {
    local key value
    for key in BACKUP_S3_URI BACKUP_S3_ENDPOINT_URL BACKUP_S3_REGION; do
        [[ -z "${!key:-}" ]] || continue
        value="$(sed -n "s/^$key=//p" "$DEPLOY_ROOT/.env" | tail -n 1)"
        # Compose reads a quoted value without its quotes.
        value="${value#[\"\']}" && value="${value%[\"\']}"
        [[ -z "$value" ]] || export "$key=$value"
    done
    if [[ -z "${AWS_DEFAULT_REGION:-}" && -n "${BACKUP_S3_REGION:-}" ]]; then
        export AWS_DEFAULT_REGION="$BACKUP_S3_REGION"
    fi
    if [[ -z "${AWS_SHARED_CREDENTIALS_FILE:-}" && -s "$DEPLOY_ROOT/secrets/backup_aws_credentials" ]]; then
        export AWS_SHARED_CREDENTIALS_FILE="$DEPLOY_ROOT/secrets/backup_aws_credentials"
    fi
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
    ip="$(compose_frontend_ip "$(compose_container "api-$1")")"
    echo "http://${ip:?api-$1 is on no frontend network}:8080"
}

# Docker sends SIGTERM and waits stop_grace_period before it kills.
driver_stop() {
    compose stop "api-$1"
}

# The web container renders the recorded upstream when it starts, and nginx-reload renders
# it again in a running one. When TAG's web image has other content than the running one
# (scripts/images labels it with a hash of the frontend, the proxy config and the base), the
# container is replaced instead: at the switch to a new release, and when a repair switches
# back to the live one. Explicit returns: switch_to runs inside a condition (no set -e).
driver_proxy_apply() {
    local tag="$1" ids
    ids="$(compose_container web)"
    if [[ -z "$ids" ]]; then
        compose_web_start "$tag" || return 1
    elif [[ "$(wc -l <<<"$ids")" -eq 1 &&
        "$(web_content "$(docker inspect -f '{{.Image}}' "$ids")")" == "$(web_content "$(web_image "$tag")")" ]]; then
        docker exec "$ids" nginx-reload || return 1
    else
        compose_web_replace "$tag" || return 1
    fi
}

# Starts nginx where none runs, in edge's network namespace. edge is started, never
# recreated: nginx's connections live in its namespace (a changed edge definition, such as
# another HTTP_PORT, takes `docker compose up -d` by the operator, a moment without service).
compose_web_start() {
    local tag="$1"
    if ! compose_has_edge; then
        compose_web_without_edge "$tag"
        return
    fi
    IMAGE_TAG="$tag" compose up -d --no-deps --no-recreate edge || return 1
    IMAGE_TAG="$tag" compose up -d --no-deps web || return 1
    compose_web_wait_listening "$(compose_container web)" || return 1
}

compose_has_edge() {
    # Not grep -q: it stops reading at the match, and compose's broken pipe would fail the
    # pipeline (pipefail).
    compose config --services 2>/dev/null | grep -x edge >/dev/null
}

# A release from before edge held the ports (a rollback to it): its nginx publishes them
# itself, so edge and every nginx go first, and new connections are refused meanwhile.
compose_web_without_edge() {
    local tag="$1" ids
    echo "web: $tag's compose files have no edge; its nginx publishes the ports itself" \
        "(new connections are refused until it listens)"
    # nginx first: it runs in edge's namespace.
    mapfile -t ids < <(compose ps -aq web
        docker ps -aq --filter "label=com.docker.compose.project=$(compose_project)" \
            --filter label=com.docker.compose.service=edge)
    compose_web_remove 1 "${ids[@]}" || return 1
    IMAGE_TAG="$tag" compose up -d --no-deps web || return 1
    compose_web_wait_listening "$(compose_container web)" || return 1
    compose_exporter_follow "$tag" || return 1
    echo "web: $(web_image "$tag") publishes the ports itself"
}

# compose_web_remove SECONDS ID...: stops the containers gracefully (docker stop: the
# image's SIGQUIT for nginx, then SIGKILL after SECONDS) and removes them. Where their ports
# are missed meanwhile, nginx gets 1 s to finish its requests, which ordinary requests do in
# milliseconds, rather than the 5 s it would hold live streams (those are cut and resume on
# the new nginx).
compose_web_remove() {
    local seconds="$1" id
    shift
    for id in "$@"; do
        docker stop -t "$seconds" "$id" >/dev/null || return 1
        docker rm "$id" >/dev/null || return 1
    done
}

compose_project() {
    compose config | sed -n 's/^name: //p' | head -n 1
}

# Replaces nginx without refusing a connection: TAG's nginx starts beside the running one
# in edge's network namespace (compose scales web up by one, leaving the running container
# as it is), both listening with SO_REUSEPORT, and once it listens the old one is stopped.
# docker stop sends SIGQUIT (the image's STOPSIGNAL): nginx closes its listeners, whose
# queued connections the kernel moves to the new nginx's (edge's tcp_migrate_req), finishes
# its requests and ends its live streams after worker_shutdown_timeout; those resume with
# Last-Event-ID on the new nginx. More than one old container is left only by an interrupted
# replacement; they all go.
compose_web_replace() {
    local tag="$1" started=$SECONDS old new
    if ! compose_has_edge; then
        compose_web_without_edge "$tag"
        return
    fi
    if [[ -z "$(compose ps -q --status running edge 2>/dev/null)" ]]; then
        compose_web_move_to_edge "$tag"
        return
    fi
    old="$(compose ps -aq web)"
    echo "web: $tag brings other frontend or proxy content; starting $(web_image "$tag") beside the running nginx"
    IMAGE_TAG="$tag" compose up -d --no-deps --no-recreate --scale "web=$(($(wc -l <<<"$old") + 1))" web || return 1
    new="$(compose ps -aq web | grep -vxF "$old")"
    if [[ "$(wc -l <<<"$new")" -ne 1 || -z "$new" ]]; then
        echo "web: expected one new nginx container, found: ${new:-none}" >&2
        return 1
    fi
    compose_web_wait_listening "$new" || return 1
    echo "web: the new nginx (${new:0:12}) listens beside the old one; stopping the old one"
    # Docker's default 10 s: nobody waits for the old nginx, which ends its streams at 5 s.
    # shellcheck disable=SC2086 # container ids, one per line
    compose_web_remove 10 $old || return 1
    echo "web: the new nginx serves alone (replaced in about $((SECONDS - started))s)"
}

# The first replacement on a host whose nginx still publishes the ports itself (laid out
# before edge held them): the ports can move only once that nginx is gone, so new
# connections are refused for a moment, this once.
compose_web_move_to_edge() {
    local tag="$1" ids
    echo "web: no edge holds the ports yet; moving them from the running nginx to edge" \
        "(new connections are refused until $(web_image "$tag") listens)"
    mapfile -t ids < <(compose ps -aq web)
    compose_web_remove 1 "${ids[@]}" || return 1
    compose_web_start "$tag" || return 1
    compose_exporter_follow "$tag" || return 1
    echo "web: edge holds the ports now, and $(web_image "$tag") listens in its namespace"
}

# nginx-exporter shares nginx's network namespace: when that namespace changes hands (edge
# takes it over from nginx, or gives it back), the exporter is recreated in the new one.
compose_exporter_follow() {
    if [[ -n "$(compose --profile monitoring ps -q nginx-exporter 2>/dev/null)" ]]; then
        IMAGE_TAG="$1" compose --profile monitoring up -d --no-deps --force-recreate nginx-exporter || return 1
    fi
}

# Waits until the nginx container ID listens: once the entrypoint has exec'd nginx (pid 1's
# name; before that, pid 1's children are the entrypoint's scripts), its master binds every
# listener before it starts its workers, so workers mean bound ports (read from /proc: the
# image has no pgrep). Polled every 50 ms rather than through the health check (an interval
# of 10 s).
compose_web_wait_listening() {
    local id="$1" deadline=$((SECONDS + ${DEPLOY_HEALTH_TIMEOUT:-120}))
    # shellcheck disable=SC2016 # expanded by the container's shell
    until [[ -n "$(docker exec "$id" sh -c 'read -r name </proc/1/comm && [ "$name" = nginx ] &&
        cat /proc/1/task/1/children' 2>/dev/null)" ]]; do
        if ((SECONDS >= deadline)) || [[ "$(docker inspect -f '{{.State.Running}}' "$id")" != true ]]; then
            echo "web: the nginx in ${id:0:12} does not listen; its log:" >&2
            docker logs --tail 30 "$id" >&2 2>&1 || true
            return 1
        fi
        sleep 0.05
    done
}

driver_proxy_running() {
    [[ -n "$(compose ps -q --status running web 2>/dev/null)" ]]
}

# nginx's master is the web container's pid 1; its children are the workers (read from
# /proc: the nginx image has no pgrep). Each pid is qualified by its container's id: a
# replaced container's pids start again from 1 and may repeat the old ones.
driver_proxy_workers() {
    local id
    for id in $(compose_container web); do
        docker exec "$id" cat /proc/1/task/1/children 2>/dev/null | tr ' ' '\n' | grep . | sed "s/^/${id:0:12}:/" || true
    done
}

# With NGINX_TLS=on in .env the plain port only redirects, so the checks go through HTTPS,
# without verifying the certificate: it names the public domain, not this address (or is
# still the placeholder before the first one is issued).
compose_tls_on() {
    [[ "$(sed -n 's/^NGINX_TLS=//p' "$DEPLOY_ROOT/.env" 2>/dev/null | tail -n 1)" == on ]]
}

driver_proxy_url() {
    local published
    if compose_tls_on; then
        published="$(compose port edge 8443)"
        echo "https://127.0.0.1:${published##*:}"
    else
        published="$(compose port edge 8080)"
        echo "http://127.0.0.1:${published##*:}"
    fi
}

web_content() {
    docker image inspect -f '{{index .Config.Labels "io.github.two-tier-rs.messages.web-content"}}' "$1"
}

# TAG's web image, as compose names it (config --images lists every service's, whatever
# services it is given).
web_image() {
    IMAGE_TAG="$1" compose config --images | grep '/messages-web:' | sort -u
}

# The candidate web container's name: one per compose project, so a leftover one is found.
web_candidate_name() {
    echo "$(compose_project)-web-candidate"
}

# When TAG's web image has other content than the running one, it is checked before the
# switch: a candidate container of it, pointed at COLOR (its own state folder holds COLOR's
# upstream), must answer the page and pass the smoke test. It runs web's own definition in
# the running nginx's network namespace (edge's; on a host laid out before edge, that
# nginx's own), but on ports that nothing publishes and without reuseport
# (WEB_CANDIDATE_*): users never reach it. It is removed either way.
WEB_CANDIDATE_LISTEN=18080 WEB_CANDIDATE_TLS_LISTEN=18443 WEB_CANDIDATE_STATUS_LISTEN=127.0.0.1:18081
driver_proxy_verify() {
    local color="$1" tag="$2" id name candidate_state holder ip url tls=() deadline page ok=0
    id="$(compose_container web)"
    if [[ -n "$id" && "$(web_content "$(docker inspect -f '{{.Image}}' "$id")")" == "$(web_content "$(web_image "$tag")")" ]]; then
        echo "web: frontend and proxy config unchanged; nginx keeps running and reloads at the switch"
        return 0
    fi
    if [[ -z "$id" ]]; then
        echo "web: no nginx runs yet; it starts at the switch"
        return 0
    fi
    step "Checking $tag's new web image in a candidate container (on unpublished ports) pointed at $color"
    name="$(web_candidate_name)"
    driver_proxy_cleanup
    candidate_state="$DEPLOY_STATE_DIR/web-candidate"
    mkdir -p "$candidate_state"
    printf '%s\n' "$(driver_upstream "$color")" >"$candidate_state/api-upstream"
    # Where the release's files have no edge (a rollback to a release from before it), web's
    # definition puts the candidate on the frontend network by itself.
    if compose_has_edge; then
        holder="$(compose_nginx_namespace "$(head -n 1 <<<"$id")")"
        printf 'services:\n  web:\n    network_mode: "container:%s"\n' "$holder" >"$candidate_state/compose.yml"
    else
        holder="$name"
        printf 'services: {}\n' >"$candidate_state/compose.yml"
    fi
    DEPLOY_STATE_DIR="$candidate_state" IMAGE_TAG="$tag" \
        compose -f "$candidate_state/compose.yml" run -d --no-deps --name "$name" -e NGINX_LISTEN_OPTIONS= \
        -e NGINX_LISTEN="$WEB_CANDIDATE_LISTEN" -e NGINX_TLS_LISTEN="$WEB_CANDIDATE_TLS_LISTEN" \
        -e STATUS_LISTEN="$WEB_CANDIDATE_STATUS_LISTEN" web >/dev/null || return 1
    ip="$(compose_frontend_ip "$holder")"
    if [[ -z "$ip" ]]; then
        echo "web: nginx's network namespace ($holder) is on no frontend network" >&2
        driver_proxy_cleanup
        return 1
    fi
    if compose_tls_on; then
        url="https://$ip:$WEB_CANDIDATE_TLS_LISTEN"
        tls=(--insecure)
    else
        url="http://$ip:$WEB_CANDIDATE_LISTEN"
    fi
    deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null --max-time 1 "${tls[@]}" "$url/" 2>/dev/null; do
        if ((SECONDS >= deadline)) || [[ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]]; then
            echo "web: the candidate does not serve the page on $url; its log:" >&2
            docker logs --tail 30 "$name" >&2 2>&1 || true
            break
        fi
        sleep 0.2
    done
    if page="$(curl -fsS --max-time 5 "${tls[@]}" "$url/")" && [[ "$page" == *'</html>'* ]] &&
        echo "web candidate: GET / -> 200 with the page" &&
        "$DEPLOY_LIB/../smoke-test" "${tls[@]}" "$url"; then
        ok=1
    fi
    driver_proxy_cleanup
    if ((ok)); then
        echo "web: $tag's web image passed the checks on $url"
    else
        echo "web: $tag's web image failed the checks on $url" >&2
        return 1
    fi
}

# The container whose network namespace the nginx container ID runs in: edge's, or on a
# host laid out before edge, nginx's own.
compose_nginx_namespace() {
    local mode
    mode="$(docker inspect -f '{{.HostConfig.NetworkMode}}' "$1")"
    if [[ "$mode" == container:* ]]; then
        echo "${mode#container:}"
    else
        echo "$1"
    fi
}

# A container's address on the frontend network, which this machine reaches.
compose_frontend_ip() {
    docker inspect -f '{{range $name, $net := .NetworkSettings.Networks}}{{$name}} {{$net.IPAddress}}{{"\n"}}{{end}}' \
        "$1" | awk '$1 ~ /_frontend$/ {print $2}'
}

# Removes what an interrupted driver_proxy_verify left (idempotent).
driver_proxy_cleanup() {
    local name
    name="$(web_candidate_name)"
    if [[ -n "$(docker ps -aq --filter "name=^${name}\$")" ]]; then
        echo "web: removing the candidate container $name"
        docker rm -f "$name" >/dev/null
    fi
    rm -rf "$DEPLOY_STATE_DIR/web-candidate"
}

driver_finish() {
    local tag="$1" env_file="$DEPLOY_ROOT/.env"
    echo "recording IMAGE_TAG=$tag in $env_file"
    if grep -q '^IMAGE_TAG=' "$env_file"; then
        sed -i "s/^IMAGE_TAG=.*/IMAGE_TAG=$tag/" "$env_file"
    else
        echo "IMAGE_TAG=$tag" >>"$env_file"
    fi
    # The backup services run the live release's scripts (and definition). nginx was
    # switched to TAG's web image already, before the commit (driver_proxy_apply).
    compose up -d --no-deps backup binlog-archiver
}

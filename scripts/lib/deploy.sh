# shellcheck shell=bash
# The deploy's state, its journal and its driver, shared by scripts/deploy, scripts/rollback
# and scripts/restore. Source scripts/lib/common.sh first.
#
# State lives in DEPLOY_STATE_DIR (default .deploy/ in DEPLOY_DIR), one value per file:
#   color         the color nginx sends traffic to (blue or green)
#   api-upstream  that color's address as nginx sees it (the web container reads this file)
#   current       the tag that color runs
#   previous      the tag that ran before it (what scripts/rollback returns to)
#   deploying     the journal of a deploy under way (tag, from, to, was, phase); see repair
#   lock          held (flock) by the deploy, rollback or restore that runs
# Each release's delivery files (compose files, docker/, scripts/, ...) are kept in
# DEPLOY_DIR/releases/TAG; a deploy installs TAG's into DEPLOY_DIR, and undoing a deploy
# installs those of the release that was live again. A committed deploy prunes the rest (see
# release_prune).
#
# How a version is started is the driver's business, chosen by DEPLOY_DRIVER:
#   compose  (default) the EC2 host: docker compose with docker-compose.prod.yml
#   process  plain processes behind a local nginx (scripts/test-delivery)
# A driver defines these functions; scripts/deploy holds the switching logic that calls them.
#   driver_prepare TAG        fetch TAG and start what it needs besides the API
#   driver_migrate TAG        run TAG's database migrations
#   driver_start COLOR TAG    start TAG as COLOR, replacing whatever COLOR ran
#   driver_status COLOR       print healthy, starting or down
#   driver_upstream COLOR     print the host:port nginx uses to reach COLOR
#   driver_color_url COLOR    print COLOR's own base URL on this machine, past nginx
#   driver_stop COLOR         stop COLOR gracefully (it finishes in-flight requests)
#   driver_proxy_verify COLOR TAG  when TAG brings a new nginx (the compose driver's web
#                             image), check it beside the live one, pointed at COLOR, before
#                             anyone reaches it
#   driver_proxy_cleanup      remove what an interrupted driver_proxy_verify left
#   driver_proxy_running      succeed when nginx runs
#   driver_proxy_apply TAG    make nginx use state/api-upstream: reload, start it, or replace
#                             it by TAG's when TAG's differs from the running one
#   driver_proxy_workers      print nginx's worker processes, each one id (a pid, qualified by
#                             whatever makes it unique, such as its container)
#   driver_proxy_url          print nginx's base URL on this machine
#   driver_finish TAG         driver bookkeeping once TAG is live (idempotent: repair reruns it)
# and, for scripts/restore, the database:
#   driver_migrations TAG     print the names of TAG's MySQL migrations (migrations/mysql)
#   driver_db_open            get ready to reach the database; driver_db_close when done
#   driver_db_name            print the name of the app's database
#   driver_sql ARGS...        the mysql client as a user that may create databases
#   driver_dump ARGS...       mysqldump as that user

# The host's folder: .env, secrets/, the state, the live release's files. scripts/remote runs
# a new release's scripts from releases/ with DEPLOY_DIR set to it.
DEPLOY_ROOT="${DEPLOY_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
# The folder of the scripts that run (an upload's, before they are installed).
DEPLOY_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY_STATE_DIR="${DEPLOY_STATE_DIR:-$DEPLOY_ROOT/.deploy}"
DEPLOY_DRIVER="${DEPLOY_DRIVER:-compose}"
export DEPLOY_STATE_DIR

case "$DEPLOY_DRIVER" in
compose | process)
    # The drivers are shellchecked on their own.
    # shellcheck source=/dev/null
    source "$DEPLOY_LIB/deploy-$DEPLOY_DRIVER.sh"
    ;;
*)
    echo "DEPLOY_DRIVER must be compose or process, not '$DEPLOY_DRIVER'" >&2
    exit 2
    ;;
esac

# Prints a state value, or $2 when it was never recorded.
state_get() {
    if [[ -s "$DEPLOY_STATE_DIR/$1" ]]; then
        cat "$DEPLOY_STATE_DIR/$1"
    else
        printf '%s\n' "${2:-}"
    fi
}

# Records a state value atomically: readers (nginx's container among them) see the old
# file or the new one, never half of one.
state_set() {
    mkdir -p "$DEPLOY_STATE_DIR"
    printf '%s\n' "$2" >"$DEPLOY_STATE_DIR/.$1.tmp"
    mv -f "$DEPLOY_STATE_DIR/.$1.tmp" "$DEPLOY_STATE_DIR/$1"
}

# One deploy, rollback or restore at a time on this machine: takes the lock or exits 75.
# The lock is this process's descriptor 9, so it ends with the process, even a killed one;
# what a deploy leaves running (servers, nginx) is started with 9>&- so as not to keep it.
# A script exec'd by the holder (rollback runs deploy) holds it already.
state_lock() {
    if [[ "${DEPLOY_LOCKED:-}" == "$DEPLOY_STATE_DIR" ]] && { true >&9; } 2>/dev/null; then
        return 0
    fi
    mkdir -p "$DEPLOY_STATE_DIR"
    exec 9>>"$DEPLOY_STATE_DIR/lock"
    if ! flock --nonblock 9; then
        echo "another deploy is running (lock: $DEPLOY_STATE_DIR/lock)" >&2
        exit 75
    fi
    export DEPLOY_LOCKED="$DEPLOY_STATE_DIR"
}

# The journal: `deploying` holds what a deploy under way changes, written (atomically, as
# every state value) before each phase. The phases, in order:
#   prepare migrate start verify    the live color serves; TAG is fetched, started, smoke-tested
#                                   (a new web image too, in a candidate container)
#   switch                          nginx is being pointed at the new color (and replaced by
#                                   TAG's, when its web image changed)
#   committed                       nginx serves the new color only; the rest is bookkeeping
journal_begin() {
    JOURNAL_TAG="$1" JOURNAL_FROM="$2" JOURNAL_TO="$3" JOURNAL_WAS="$4"
    journal_phase prepare
}

journal_phase() {
    state_set deploying "$(printf 'tag=%s\nfrom=%s\nto=%s\nwas=%s\nphase=%s' \
        "$JOURNAL_TAG" "$JOURNAL_FROM" "$JOURNAL_TO" "$JOURNAL_WAS" "$1")"
    echo "deploy phase: $1"
}

journal_read() {
    local key value
    JOURNAL_TAG='' JOURNAL_FROM='' JOURNAL_TO='' JOURNAL_WAS='' JOURNAL_PHASE=''
    while IFS='=' read -r key value; do
        case "$key" in
        tag) JOURNAL_TAG="$value" ;;
        from) JOURNAL_FROM="$value" ;;
        to) JOURNAL_TO="$value" ;;
        was) JOURNAL_WAS="$value" ;;
        phase) JOURNAL_PHASE="$value" ;;
        esac
    done <"$DEPLOY_STATE_DIR/deploying"
}

# Points nginx at COLOR, running TAG's nginx (the release whose web image must serve), and
# returns once every worker that served the old upstream has finished its requests and
# exited, so nothing reaches the other color any more.
switch_to() {
    local color="$1" tag="$2" before worker deadline=$((SECONDS + 60))
    before="$(driver_proxy_workers)"
    state_set color "$color"
    state_set api-upstream "$(driver_upstream "$color")"
    driver_proxy_apply "$tag" || return 1
    for worker in $before; do
        # (grep reads to the end: with -q the driver's broken pipe would end the wait early.)
        while driver_proxy_workers | grep -xF "$worker" >/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "nginx worker $worker still runs after 60s" >&2
                return 1
            fi
            sleep 0.2
        done
    done
    echo "nginx now sends every request to $color ($(driver_upstream "$color"))"
}

# Brings the host back to a consistent state after a deploy that did not finish (it failed,
# or was interrupted: SIGTERM, SIGKILL, an ssh session dropped): the state files, nginx's
# upstream and the running colors agree again. Before the commit the deploy is undone (nginx
# back on the color that was live, the new one stopped); after it, it is finished. Every
# step is safe to repeat, so an interrupted repair is repaired by the next one.
repair() {
    [[ -f "$DEPLOY_STATE_DIR/deploying" ]] || return 0
    journal_read
    driver_proxy_cleanup
    if [[ "$JOURNAL_PHASE" == committed ]]; then
        step "Repair: finishing the deploy of $JOURNAL_TAG on $JOURNAL_TO (it was interrupted after the switch)"
        if [[ "$(state_get api-upstream)" != "$(driver_upstream "$JOURNAL_TO")" ]]; then
            switch_to "$JOURNAL_TO" "$JOURNAL_TAG"
        fi
        record_live "$JOURNAL_TAG" "$JOURNAL_WAS"
        step "Draining and stopping $JOURNAL_FROM"
        driver_stop "$JOURNAL_FROM"
        driver_finish "$JOURNAL_TAG"
    else
        step "Repair: undoing the deploy of $JOURNAL_TAG (stopped at phase ${JOURNAL_PHASE:-?}); $JOURNAL_FROM serves ${JOURNAL_WAS:-nothing}"
        if [[ -n "$JOURNAL_WAS" && "$(driver_status "$JOURNAL_FROM")" != healthy ]]; then
            echo "warning: $JOURNAL_FROM, which served $JOURNAL_WAS, is not healthy" >&2
        fi
        # The live release's files first: its nginx is started from its own definition.
        release_install "$JOURNAL_WAS"
        # An nginx that is not running while a release was live was being replaced: it is
        # started again, from the live release's web image.
        if driver_proxy_running || [[ -n "$JOURNAL_WAS" ]]; then
            switch_to "$JOURNAL_FROM" "$JOURNAL_WAS"
        else
            state_set color "$JOURNAL_FROM"
            state_set api-upstream "$(driver_upstream "$JOURNAL_FROM")"
        fi
        driver_stop "$JOURNAL_TO"
    fi
    rm -f "$DEPLOY_STATE_DIR/deploying"
    echo "repaired: $(state_get color) serves $(state_get current nothing)"
}

# release_install TAG: copies releases/TAG's delivery files over DEPLOY_DIR's, when the host
# keeps that release (scripts/remote uploads them; a host laid out by hand has none).
release_install() {
    local files="$DEPLOY_ROOT/releases/$1" staging
    [[ -n "$1" && -d "$files" ]] || return 0
    echo "installing the delivery files of $1 ($files)"
    # Copied beside their places first, then each renamed over its own: a file is always
    # whole, the old one or the new one, even in a deploy killed meanwhile (a file copied in
    # place would be left cut short, and a cut-short scripts/rollback does nothing, silently).
    # A renamed file is a new one, too: the scripts running now (scripts/deploy itself, on a
    # rollback) are among them, and bash reads a script as it goes, so it keeps reading the
    # old file. A staging copy that a killed install left behind is removed first.
    rm -rf "$DEPLOY_ROOT"/.install.*
    staging="$(mktemp -d "$DEPLOY_ROOT/.install.XXXXXX")"
    cp -a "$files/." "$staging/"
    (
        cd "$staging" || exit
        # Parents before children; a new folder keeps the release's mode.
        find . -mindepth 1 -type d -print0 | while IFS= read -r -d '' folder; do
            if [[ ! -d "$DEPLOY_ROOT/$folder" ]]; then
                mkdir "$DEPLOY_ROOT/$folder"
                chmod --reference="$folder" "$DEPLOY_ROOT/$folder"
            fi
        done
        find . ! -type d -print0 | xargs -0 -I '{}' mv -f -T '{}' "$DEPLOY_ROOT/{}"
    )
    rm -rf "$staging"
}

# release_stage UPLOAD TAG: keeps a copy of an upload as releases/TAG (the upload itself
# runs this deploy; the next one removes it), first keeping the files of the live release
# WAS ($3) as releases/WAS when the host has no copy of them yet, so that undoing this
# deploy can put them back.
release_stage() {
    local upload="$1" tag="$2" was="${3:-}" entry
    if [[ -n "$was" && ! -d "$DEPLOY_ROOT/releases/$was" ]]; then
        mkdir -p "$DEPLOY_ROOT/releases/.keep"
        for entry in "$upload"/*; do
            entry="$(basename "$entry")"
            if [[ -e "$DEPLOY_ROOT/$entry" ]]; then
                cp -a "$DEPLOY_ROOT/$entry" "$DEPLOY_ROOT/releases/.keep/"
            fi
        done
        mv -T "$DEPLOY_ROOT/releases/.keep" "$DEPLOY_ROOT/releases/$was"
    fi
    mkdir -p "$DEPLOY_ROOT/releases/$tag"
    cp -a "$upload/." "$DEPLOY_ROOT/releases/$tag/"
    find "$DEPLOY_ROOT/releases" -mindepth 1 -maxdepth 1 -name '.upload.*' ! -path "$upload" -exec rm -rf {} +
}

# record_live TAG WAS: TAG is current, WAS (the tag live before it) previous; TAG's release
# folder, if the host keeps one, becomes the most recently deployed (see release_prune).
record_live() {
    if [[ -n "$2" && "$2" != "$1" ]]; then
        state_set previous "$2"
    fi
    state_set current "$1"
    touch -c "$DEPLOY_ROOT/releases/$1"
}

# release_prune: run under the lock once a deploy is committed. Removes the folders of
# releases/ that the host no longer needs: all but the live release (current), the one it
# replaced (previous: what scripts/rollback deploys again, from its files here) and the
# DEPLOY_KEEP_RELEASES (default 5) most recently deployed or staged. Uploads (.upload.*) are
# not releases yet: one may be arriving for the next deploy.
release_prune() {
    local folder="$DEPLOY_ROOT/releases" keep="${DEPLOY_KEEP_RELEASES:-5}" live previous name rank=0
    [[ -d "$folder" ]] || return 0
    live="$(state_get current)"
    previous="$(state_get previous)"
    # Newest first; a tag has no spaces or newlines (scripts/deploy checks it).
    while read -r name; do
        rank=$((rank + 1))
        if [[ "$name" == "$live" || "$name" == "$previous" ]] || ((rank <= keep)); then
            continue
        fi
        echo "removing release $name ($folder/$name): not live, not the rollback target, not among the $keep newest"
        rm -rf "${folder:?}/$name" || return 1
    done < <(find "$folder" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %f\n' | sort -rn | cut -d' ' -f2-)
}

# On a failure (any command's, under set -e), SIGTERM, SIGINT, SIGHUP (an ssh session
# dropped) or SIGPIPE (its output gone), repair at once rather than at the next deploy.
# Later signals are ignored so that they cannot cut the repair short; a SIGKILL can, and
# leaves the journal to the next deploy or rollback.
repair_on_signals() {
    local signal
    for signal in TERM INT HUP PIPE; do
        # shellcheck disable=SC2064 # the signal's name, now
        trap "interrupted $signal" "$signal"
    done
    trap 'repair_on_failure $?' EXIT
}

repair_on_failure() {
    if (($1 != 0)) && [[ -f "$DEPLOY_STATE_DIR/deploying" ]]; then
        trap '' TERM INT HUP PIPE
        echo "deploy failed (exit status $1); repairing" >&2
        repair
    fi
}

interrupted() {
    trap '' TERM INT HUP PIPE
    if [[ "$1" == HUP || "$1" == PIPE ]]; then
        exec >>"$DEPLOY_STATE_DIR/interrupted.log" 2>&1
    fi
    echo "deploy interrupted by SIG$1 ($(date -u +%FT%TZ)); repairing" >&2
    # Under set -e: a failed repair leaves the journal for the next deploy or rollback.
    repair
    exit 1
}

# Waits until COLOR is healthy; fails at once when it is down, or after DEPLOY_HEALTH_TIMEOUT.
wait_healthy() {
    local color="$1" status deadline=$((SECONDS + ${DEPLOY_HEALTH_TIMEOUT:-120}))
    while true; do
        status="$(driver_status "$color")"
        case "$status" in
        healthy)
            echo "$color is healthy"
            return 0
            ;;
        down)
            echo "$color is not running" >&2
            return 1
            ;;
        esac
        if ((SECONDS >= deadline)); then
            echo "$color is still $status after ${DEPLOY_HEALTH_TIMEOUT:-120}s" >&2
            return 1
        fi
        sleep 1
    done
}

other_color() {
    if [[ "$1" == blue ]]; then echo green; else echo blue; fi
}

# shellcheck shell=bash
# What scripts/bench and scripts/bench-cluster measure, the same way in both: CPU time and
# RSS from /proc, the wrk scenarios with their CPU cost, and the database's raw rate. They
# expect api_pid, nginx_pids (master and workers), connections, seconds, results and work
# to be set.
# shellcheck disable=SC2154,SC2034  # those globals are the callers', and the ones set for them

# cpu_ticks PID...: the processes' utime + stime so far, summed, in clock ticks (fields 14
# and 15 of /proc/PID/stat; the command name in field 2 ends with the last ")").
cpu_ticks() {
    local pid stat fields total=0
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        read -ra fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# rss_kb PID...: the processes' resident memory now, summed, in kB.
rss_kb() {
    local pid total=0 kb
    for pid in "$@"; do
        kb=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status")
        total=$((total + kb))
    done
    echo "$total"
}

# sample_peak_rss OUT: every 0.2 s until killed, writes the peaks of the API's RSS and of
# nginx's (master and workers summed) so far to OUT as "API_KB NGINX_KB".
sample_peak_rss() {
    local out=$1 api_peak=0 nginx_peak=0 api nginx
    while true; do
        api=$(rss_kb "$api_pid")
        nginx=$(rss_kb "${nginx_pids[@]}")
        ((api > api_peak)) && api_peak=$api
        ((nginx > nginx_peak)) && nginx_peak=$nginx
        echo "$api_peak $nginx_peak" >"$out"
        sleep 0.2
    done
}

# cpu_json FILE API_BEFORE NGINX_BEFORE: the CPU ticks spent since the two readings.
cpu_json() {
    printf '{"clk_tck":%d,"api_ticks":%d,"nginx_ticks":%d}\n' "$clk_tck" \
        $(($(cpu_ticks "$api_pid") - $2)) $(($(cpu_ticks "${nginx_pids[@]}") - $3)) >"$1"
}

clk_tck=$(getconf CLK_TCK)

# run SCENARIO TARGET URL SCRIPT
run() {
    local name=$1 target=$2 url=$3 script=$4 api_before nginx_before
    printf '  %-12s %-6s %s ' "$name" "$target" "$url"
    api_before=$(cpu_ticks "$api_pid")
    nginx_before=$(cpu_ticks "${nginx_pids[@]}")
    WRK_JSON="$results/raw/$name.$target.json" \
        wrk -t2 -c"$connections" -d"${seconds}s" --timeout 5s -s "bench/$script" "$url" >/dev/null
    cpu_json "$results/raw/$name.$target.cpu.json" "$api_before" "$nginx_before"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%8.0f req/s  p99 %.1f ms" % (r["requests"]/r["duration_us"]*1e6, r["latency_us"]["p99"]/1000))' \
        "$results/raw/$name.$target.json"
}

# run_scenarios DIRECT PROXY ONE_ID: warms up, then runs every scenario (bench/report.py's
# SCENARIOS) straight at the API (DIRECT) and through nginx (PROXY); ONE_ID is a message
# that exists.
run_scenarios() {
    local direct=$1 proxy=$2 one_id=$3 target base deep_cursor
    # A cursor deep in the table: the page that starts just below id 1000.
    deep_cursor=$(python3 -c 'import base64; print(base64.urlsafe_b64encode(b"v1:1000").decode().rstrip("="))')
    step "Warming up"
    wrk -t2 -c"$connections" -d3s "$direct/api/messages?limit=20" >/dev/null
    wrk -t2 -c"$connections" -d3s "$proxy/api/messages?limit=20" >/dev/null

    step "Scenarios: ${seconds}s each, $connections connections (direct, then through nginx)"
    for target in direct nginx; do
        base=$direct
        [ "$target" = nginx ] && base=$proxy
        run list_first "$target" "$base/api/messages?limit=20" get.lua
        run list_deep "$target" "$base/api/messages?limit=20&cursor=$deep_cursor" get.lua
        run get_one "$target" "$base/api/messages/$one_id" get.lua
        run create "$target" "$base/api/messages" create.lua
        run mix_90_10 "$target" "$base/api/messages?limit=20" mix.lua
        run health "$target" "$base/health" get.lua
    done
}

# raw_list_rate PORT OUT: the database's own rate of the list query with mysqlslap, at the
# scenarios' concurrency; sets `queries` and `slap_seconds` for the report.
raw_list_rate() {
    queries=$((connections * 4000))
    mysqlslap --no-defaults -h127.0.0.1 -P"$1" -umessages -pmessages --create-schema=bench \
        --concurrency="$connections" --iterations=1 --number-of-queries="$queries" \
        --query="SELECT id, message, created_at, updated_at FROM messages ORDER BY id DESC LIMIT 21" \
        >"$2"
    cat "$2"
    slap_seconds=$(sed -n 's/.*Average number of seconds to run all queries: \([0-9.]*\).*/\1/p' "$2")
}

# machine_json FILE LOAD_BEFORE: the machine's cores and load averages before and now.
machine_json() {
    local load_after
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "load averages (1, 5, 15 min) after: $load_after"
    printf '{"cores":%d,"load_before":"%s","load_after":"%s"}\n' "$(nproc)" "$2" "$load_after" >"$1"
}

#!/bin/sh
# Upstream's template step: each NGINX_ENVSUBST_TEMPLATE_DIR/*.template (default
# /etc/nginx/templates) is rendered into NGINX_ENVSUBST_OUTPUT_DIR (default
# /etc/nginx/conf.d) without its suffix. Only the environment's variables whose names match
# NGINX_ENVSUBST_FILTER (a regular expression; default: all) are substituted.
set -e
template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
filter="${NGINX_ENVSUBST_FILTER:-}"

[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
    echo "$0: ERROR: $template_dir exists, but $output_dir is not writable" >&2
    exit 0
fi
# "${NAME} " for each matching variable: envsubst's list of what it may replace.
names=$(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" </dev/null)
# shellcheck disable=SC2016 # the dollar is for envsubst
defined_envs=$(for name in $names; do printf '${%s} ' "$name"; done)
find "$template_dir" -follow -type f -name "*$suffix" -print | while read -r template; do
    relative_path="${template#"$template_dir/"}"
    output_path="$output_dir/${relative_path%"$suffix"}"
    mkdir -p "$(dirname "$output_path")"
    echo "$0: Running envsubst on $template to $output_path"
    envsubst "$defined_envs" <"$template" >"$output_path"
done

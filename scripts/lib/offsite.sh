# shellcheck shell=bash
# Off-host copies in S3 with the AWS CLI: every upload is verified after it lands (size and
# SHA-256 as S3 reports them), every download before it is used. Used by scripts/backup,
# scripts/archive-binlogs and scripts/restore.
#
#   BACKUP_S3_URI           s3://BUCKET/PREFIX: dumps go under PREFIX/dumps/, binary logs
#                           under PREFIX/binlogs/ (on the EC2 host: the stack's bucket and
#                           the stack's name, the only prefix its role may write)
#   BACKUP_S3_ENDPOINT_URL  another S3 endpoint than AWS's (an S3-compatible server; the tests'
#                           local one); unset: AWS
# Credentials are the AWS CLI's own: the instance role on the EC2 host, AWS_* otherwise.

# Checks BACKUP_S3_URI and that the AWS CLI is there; sets OFFSITE_BUCKET and OFFSITE_PREFIX.
offsite_init() {
    if [[ ! "${BACKUP_S3_URI:-}" =~ ^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(.*[^/])?)?/?$ ]]; then
        echo "BACKUP_S3_URI must look like s3://bucket/prefix, not '${BACKUP_S3_URI:-}'" >&2
        return 1
    fi
    OFFSITE_BUCKET="${BASH_REMATCH[1]}"
    OFFSITE_PREFIX="${BASH_REMATCH[3]:+${BASH_REMATCH[3]}/}"
    if ! command -v aws >/dev/null; then
        echo "BACKUP_S3_URI is set but the AWS CLI is missing: install awscli" >&2
        return 1
    fi
}

# offsite_aws ARGS...: the AWS CLI on the configured endpoint.
offsite_aws() {
    local endpoint=()
    [[ -z "${BACKUP_S3_ENDPOINT_URL:-}" ]] || endpoint=(--endpoint-url "$BACKUP_S3_ENDPOINT_URL")
    aws "${endpoint[@]}" "$@"
}

# The SHA-256 of a file, base64-encoded, as S3 states checksums.
offsite_sha256() {
    local hex
    hex="$(sha256sum "$1" | cut -d' ' -f1)" || return 1
    # The hex digest as \x escapes, which printf turns into bytes.
    # shellcheck disable=SC2001,SC2059
    printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64
}

# offsite_verify KEY SIZE SHA256: S3's own size and SHA-256 of KEY are these.
offsite_verify() {
    local key="$1" size="$2" sha="$3" stored
    if ! stored="$(offsite_aws s3api head-object --bucket "$OFFSITE_BUCKET" --key "$key" \
        --checksum-mode ENABLED --query '[ContentLength, ChecksumSHA256]' --output text)"; then
        echo "cannot read back s3://$OFFSITE_BUCKET/$key" >&2
        return 1
    fi
    if [[ "$stored" != "$size"$'\t'"$sha" ]]; then
        echo "s3://$OFFSITE_BUCKET/$key does not match: S3 holds size and SHA-256 '${stored//$'\t'/ }', expected '$size $sha'" >&2
        return 1
    fi
    echo "verified s3://$OFFSITE_BUCKET/$key: $size bytes, SHA-256 $sha"
}

# offsite_upload FILE NAME: FILE to PREFIX/NAME, then checks that S3 holds its size and
# SHA-256 (the CLI sends the checksum of what it read; S3 stores the one it computed). One
# PUT: up to 5 GB.
offsite_upload() {
    local file="$1" key="$OFFSITE_PREFIX$2" size sha
    size="$(stat -c %s "$file")" && sha="$(offsite_sha256 "$file")" || return 1
    echo "uploading $file to s3://$OFFSITE_BUCKET/$key"
    offsite_aws s3api put-object --bucket "$OFFSITE_BUCKET" --key "$key" --body "$file" \
        --checksum-algorithm SHA256 >/dev/null || return 1
    offsite_verify "$key" "$size" "$sha"
}

# offsite_list DIR: the names under PREFIX/DIR/, one per line, sorted.
offsite_list() {
    local keys
    keys="$(offsite_aws s3api list-objects-v2 --bucket "$OFFSITE_BUCKET" --prefix "$OFFSITE_PREFIX$1/" \
        --query 'Contents[].Key' --output text)" || return 1
    # The CLI prints None for no objects, and several keys per line.
    tr '\t' '\n' <<<"$keys" | grep -v '^None$' | sed -n "s|^$OFFSITE_PREFIX$1/||p" | grep . | sort || true
}

# offsite_sizes DIR: "NAME SIZE" for each object under PREFIX/DIR/, one per line, sorted.
offsite_sizes() {
    local listed
    listed="$(offsite_aws s3api list-objects-v2 --bucket "$OFFSITE_BUCKET" --prefix "$OFFSITE_PREFIX$1/" \
        --query 'Contents[].[Key, Size]' --output text)" || return 1
    # The CLI prints None for no objects.
    grep -v '^None$' <<<"$listed" | sed -n "s|^$OFFSITE_PREFIX$1/\([^[:space:]]*\)[[:space:]]\+|\1 |p" | sort || true
}

# offsite_fetch NAME FILE: PREFIX/NAME into FILE, checked against the size and SHA-256 S3 holds.
offsite_fetch() {
    local key="$OFFSITE_PREFIX$1" file="$2"
    echo "downloading s3://$OFFSITE_BUCKET/$key"
    offsite_aws s3api get-object --bucket "$OFFSITE_BUCKET" --key "$key" --checksum-mode ENABLED \
        "$file" >/dev/null || return 1
    offsite_verify "$key" "$(stat -c %s "$file")" "$(offsite_sha256 "$file")"
}

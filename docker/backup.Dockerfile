# The backup image: the tools the backup and binlog-archiver services run the live
# release's scripts with (docker-compose.prod.yml mounts scripts/ from the host's folder).
# `docker build -f docker/backup.Dockerfile .` from the repository root.
#
# Debian's packages, on the Debian release the API image runs on: mariadb-client (10.11,
# the database's own series: mariadb-dump, mariadb and mariadb-binlog), awscli (the AWS CLI
# that copies and verifies the off-host copies), curl (the Pushgateway) and the CA bundle
# S3's HTTPS needs. No project file is baked in: the scripts come with each release.

# The API image's Debian release (docker/api.Dockerfile); tests/containers/test_images.py
# checks that both images run the same one.
ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends awscli ca-certificates curl gzip mariadb-client \
    && rm -rf /var/lib/apt/lists/*
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="messages-backup" \
      org.opencontainers.image.description="MariaDB client and AWS CLI for the message board's backups and binary log archive" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

# The compose file runs it as the owner of the host's backup folder; this is the default
# for any other use. HOME is writable (the AWS CLI keeps its cache there; /tmp is a tmpfs).
USER 10002:10002
ENV HOME=/tmp
# A job, not a server: its health is its metrics (the Pushgateway) and its exit code.
HEALTHCHECK NONE
CMD ["bash"]

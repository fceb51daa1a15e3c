# The API image: `docker build -f docker/api.Dockerfile .` from the repository root.
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (dependencies
# cooked in their own layer, then the crate) -> runtime (Debian slim, the binary and the
# libraries it links). Editing api/src reruns only the final copy and `cargo build`: the
# compiled dependencies stay cached. The binary is built with cargo-auditable, which embeds
# its dependency list (crate names and versions) in the binary, so image scanners see the
# crates (scripts/sbom-images, scripts/scan-images).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
# diesel's mysql backend links the system's MariaDB client library through pkg-config.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmariadb-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78 \
    && cargo install cargo-auditable --locked --version 0.7.7
WORKDIR /src

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY api/ api/
# A workspace member: cargo needs its manifest and sources to read the workspace, though
# only the API is built.
COPY bench/fanout/ bench/fanout/
COPY migrations/ migrations/
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p messages-api
COPY Cargo.toml Cargo.lock ./
COPY api/ api/
COPY bench/fanout/ bench/fanout/
COPY migrations/ migrations/
RUN cargo auditable build --release --locked -p messages-api \
    && cp target/release/messages-api /usr/local/bin/messages-api

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="messages-api" \
      org.opencontainers.image.description="JSON REST API of the two-tier message board" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# libmariadb3: the MariaDB client library diesel's mysql backend links.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libmariadb3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/messages \
               --create-home --shell /usr/sbin/nologin messages
COPY --from=builder /usr/local/bin/messages-api /usr/local/bin/messages-api
# The binary embeds its migrations; their names say which schema versions it can run, which
# scripts/restore checks a backup against.
COPY migrations/mysql/ /usr/share/messages/migrations/mysql/
# The working directory is the app's own, so the SQLite default (data/messages.db) is
# writable when no MySQL is configured.
WORKDIR /var/lib/messages
USER 10001:10001
ENV HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["messages-api", "healthcheck"]
ENTRYPOINT ["messages-api"]
CMD ["serve"]

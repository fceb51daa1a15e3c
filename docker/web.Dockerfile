# The web image: nginx with the frontend (web/) and the proxy config (nginx/) baked in.
# `docker build -f docker/web.Dockerfile .` from the repository root.
#
# nginx-unprivileged is the official image rebuilt to run as user 101 and listen on 8080. Its
# `stable` tag: the stable nginx on the Debian release upstream builds it on now, rebuilt for
# every nginx and Debian security update. (A `stable-<release>` tag stops moving once upstream
# leaves that release, as `stable-bookworm` has.) The Debian variant, not Alpine: the
# container tests build the base images from Debian packages (docs/testing.md), and the
# health check uses its curl. scripts/images pulls it at every build and puts its id in the
# image's identity, so an update of it reaches the hosts (docs/deployment.md, "Base images").
# At start its entrypoint renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/
# with envsubst; 12-template-defaults.envsh first sets the template's defaults, and
# 15-api-upstream.envsh lets the deploy's choice of API color win.

ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:stable

FROM ${NGINX_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=
ARG CONTENT=unknown
LABEL org.opencontainers.image.title="messages-web" \
      org.opencontainers.image.description="nginx serving the message board and proxying its API" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      io.github.two-tier-rs.messages.web-content="${CONTENT}"

COPY nginx/nginx.conf /etc/nginx/nginx.conf
COPY nginx/templates/ /etc/nginx/templates/
# The template's variables, their defaults and the envsubst filter that keeps nginx's own
# $variables as they are. The entrypoint runs only executable files; git keeps these
# executable, and COPY keeps the mode (no --chmod, which the classic builder lacks).
COPY nginx/template-defaults.envsh /docker-entrypoint.d/12-template-defaults.envsh
COPY docker/web/15-api-upstream.envsh /docker-entrypoint.d/
COPY docker/web/nginx-reload /usr/local/bin/
COPY web/ /usr/share/nginx/html/

# The base image's nginx user already; said here so the image runs unprivileged whatever
# the base image leaves as its user, which is why it listens on 8080 and not on 80.
USER 101
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/"]
# nginx.conf leaves the pid file to the build default (/var/run, root's); user 101 keeps it
# in /tmp, and nginx-reload passes the same setting.
CMD ["nginx", "-g", "daemon off; pid /tmp/nginx.pid;"]

# syntax=docker/dockerfile:1
# The web image: nginx with the frontend (web/) and the proxy config (nginx/) baked in.
# `docker build -f docker/web.Dockerfile .` from the repository root.
#
# nginx-unprivileged is the official image rebuilt to run as user 101 and listen on 8080.
# At start its entrypoint renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/
# with envsubst; 15-api-upstream.envsh first lets the deploy's choice of API color win.

ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:stable-alpine

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

# Only the template's own variables are substituted; nginx's $variables stay as they are.
ENV API_UPSTREAM=api:8080 \
    HTTP_PORT=8080 \
    WEB_ROOT=/usr/share/nginx/html \
    NGINX_ENVSUBST_FILTER="^(API_UPSTREAM|HTTP_PORT|WEB_ROOT)$"

COPY nginx/nginx.conf /etc/nginx/nginx.conf
COPY nginx/templates/ /etc/nginx/templates/
COPY --chmod=0755 docker/web/15-api-upstream.envsh /docker-entrypoint.d/
COPY --chmod=0755 docker/web/nginx-reload /usr/local/bin/
COPY web/ /usr/share/nginx/html/

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
# nginx.conf leaves the pid file to the build default (/var/run, root's); user 101 keeps it
# in /tmp, and nginx-reload passes the same setting.
CMD ["nginx", "-g", "daemon off; pid /tmp/nginx.pid;"]

# shellcheck shell=bash
# Image names and tags, shared by scripts/images (build, push) and scripts/remote (deploy).
# Run from the repository root.

# The tag of this checkout's images: IMAGE_TAG when set, else the commit (12 hex digits).
image_tag() {
    if [[ -n "${IMAGE_TAG:-}" ]]; then
        echo "$IMAGE_TAG"
    else
        git rev-parse --short=12 HEAD
    fi
}

# The project's images: scripts/images builds and pushes them, the scans check them.
PROJECT_IMAGES=(api web backup)

# Every project image's name with this checkout's tag.
tagged_images() {
    local image
    for image in "${PROJECT_IMAGES[@]}"; do
        echo "$(image_name "$image"):$(image_tag)"
    done
}

# image_name api|web|backup: REGISTRY/messages-api, REGISTRY/messages-web, ….
image_name() {
    echo "${REGISTRY:?set REGISTRY, e.g. ghcr.io/OWNER}/messages-$1"
}

"""The two images as scripts/images builds them."""

import json

API_SIZE_LIMIT_MB = 120


def config(engine, image: str) -> dict:
    return json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]


def test_both_images_are_built_with_the_commit_labels(engine, images, results):
    sizes = {}
    for name in ("api", "web"):
        image = f"{images['registry']}/messages-{name}:v1"
        labels = config(engine, image)["Labels"]
        assert labels["org.opencontainers.image.version"] == "v1"
        assert len(labels["org.opencontainers.image.revision"]) == 40
        sizes[name] = round(engine.image_size(image) / 1e6, 1)
    results["image_size_mb"] = sizes


def test_the_api_image_stays_under_its_size_limit(engine, images):
    size_mb = engine.image_size(f"{images['registry']}/messages-api:v1") / 1e6
    assert size_mb < API_SIZE_LIMIT_MB, f"the API image is {size_mb:.1f} MB"


def test_both_images_run_as_non_root_users(engine, images):
    for name, user in (("api", "10001:10001"), ("web", "101")):
        image = f"{images['registry']}/messages-{name}:v1"
        assert config(engine, image)["User"] == user
        uid = engine.docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
        assert uid == user.split(":")[0]


def test_the_api_binary_finds_every_library_it_links(engine, images):
    image = f"{images['registry']}/messages-api:v1"
    out = engine.docker("run", "--rm", image, "--version").stdout
    assert out.startswith("messages-api ")


def test_the_web_image_renders_its_template_with_the_defaults(engine, images):
    """The entrypoint sources the defaults, renders the template and nginx accepts it."""
    image = f"{images['registry']}/messages-web:v1"
    # The entrypoint prepares the config only for an nginx command, as upstream's does.
    result = engine.docker(
        "run", "--rm", "-e", "API_UPSTREAM=127.0.0.1:9", "--entrypoint", "sh", image, "-c",
        "/docker-entrypoint.sh nginx -t -g 'pid /tmp/nginx.pid;' 2>&1 && cat /etc/nginx/conf.d/default.conf",
    )
    rendered = result.stdout
    assert "syntax is ok" in rendered
    assert "server 127.0.0.1:9" in rendered
    assert "client_max_body_size 65536" in rendered
    assert "${" not in rendered.split("syntax is ok", 1)[1]

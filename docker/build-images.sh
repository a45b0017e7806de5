#!/usr/bin/env bash
# Builds every image sessionflow's Docker setup needs from Debian packages, PyPI and npm alone,
# for machines that reach no image registry: three Debian roots made with debootstrap and
# imported (python, postgresql, nginx), then the images of Dockerfile and docker/*/Dockerfile on
# them.
#
# Rebuilds nothing whose inputs did not change: every image is tagged with a hash of its inputs
# and skipped when that tag exists; the debootstrap tarballs stay in $SESSIONFLOW_IMAGE_CACHE
# (default /var/cache/sessionflow-ci) so a wiped Docker store costs an import, not a bootstrap.
#
# Needs root (debootstrap), docker and debootstrap. Prints the tags it made.
#   docker/build-images.sh            # all images
#   SESSIONFLOW_DEBIAN_MIRROR=URL     # the Debian mirror (default: the one apt is configured with)
#   SESSIONFLOW_ONLY_BASE=python      # only the python root
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUITE=bookworm
CACHE=${SESSIONFLOW_IMAGE_CACHE:-/var/cache/sessionflow-ci}
# BuildKit when the client has it: on a vfs store the classic builder copies the whole root
# for every instruction (minutes per image), BuildKit does not. Debian's docker.io client
# (/usr/bin/docker) has it built in; a newer client needs the buildx plugin for it.
if docker buildx version >/dev/null 2>&1; then
    DOCKER_BUILD=(docker build)
    export DOCKER_BUILDKIT=1
elif [ -x /usr/bin/docker ] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null \
    | grep -q '^20\.'; then
    DOCKER_BUILD=(/usr/bin/docker build)
    export DOCKER_BUILDKIT=1
else
    DOCKER_BUILD=(docker build)
    export DOCKER_BUILDKIT=0
fi
# Bump to rebuild every root even when its package list did not change.
RECIPE=2

log() { printf '  [images] %s\n' "$*" >&2; }

debian_mirror() {
    if [ -n "${SESSIONFLOW_DEBIAN_MIRROR:-}" ]; then
        echo "$SESSIONFLOW_DEBIAN_MIRROR"
        return
    fi
    local found=""
    # deb822 sources: the URIs of the paragraph whose Suites has the release itself.
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        found=$(awk -v suite="$SUITE" '
            function flush() { if (!done && uri != "" && has) { print uri; done = 1 } uri = ""; has = 0 }
            /^[[:space:]]*$/ { flush(); next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
            END { flush() }' /etc/apt/sources.list.d/*.sources)
    fi
    # One-line sources: deb [options] URI SUITE COMPONENTS...
    if [ -z "$found" ]; then
        found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -e 's/\[[^]]*\]//' \
            | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')
    fi
    if [ -z "$found" ]; then
        echo "no Debian $SUITE mirror in the apt sources; set SESSIONFLOW_DEBIAN_MIRROR" >&2
        return 1
    fi
    echo "$found"
}

# hash_of FILES_OR_DIRS... : a short hash of the contents and names of these paths.
hash_of() {
    local path
    for path in "$@"; do
        [ -e "$path" ] || { echo "missing input: $path" >&2; return 1; }
    done
    find "$@" -type f -not -name '*.pyc' -not -path '*/__pycache__/*' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

# root_image NAME PACKAGES : a minbase Debian root with PACKAGES, imported as
# sessionflow-NAME-base:HASH and tagged :latest. Prints the tag.
root_image() {
    local name=$1 packages=$2 key tag tarball dir mirror
    key=$(printf '%s\n' "$SUITE" "$packages" "$RECIPE" | sha256sum | cut -c1-16)
    tag="sessionflow-$name-base:$key"
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        mkdir -p "$CACHE"
        tarball="$CACHE/$name-$SUITE-$key.tar"
        if [ ! -s "$tarball" ]; then
            mirror=$(debian_mirror)
            log "debootstrap $SUITE with $packages (log: $CACHE/$name.debootstrap.log)"
            dir=$(mktemp -d "$CACHE/root-$name.XXXXXX")
            chmod 755 "$dir"  # it becomes the image's /, which everyone must traverse
            if ! debootstrap --variant=minbase --include="$packages" "$SUITE" "$dir" "$mirror" \
                >"$CACHE/$name.debootstrap.log" 2>&1; then
                tail -20 "$CACHE/$name.debootstrap.log" >&2
                rm -rf "$dir"
                return 1
            fi
            # What an image does not need: downloaded packages, package lists, docs.
            rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
                "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
            tar --numeric-owner -C "$dir" -cf "$tarball.part" .
            mv "$tarball.part" "$tarball"
            rm -rf "$dir"
        fi
        log "importing $tarball as $tag"
        docker import "$tarball" "$tag" >/dev/null
    else
        log "$tag is up to date"
    fi
    docker tag "$tag" "sessionflow-$name-base:latest"
    echo "$tag"
}

# build_image NAME DOCKERFILE CONTEXT BASE INPUTS... : docker build, tagged NAME:HASH and NAME:latest,
# skipped when NAME:HASH exists. HASH covers the base image and the INPUTS paths.
build_image() {
    local name=$1 dockerfile=$2 context=$3 base=$4 key tag base_id
    shift 4
    base_id=$(docker image inspect --format '{{.Id}}' "$base")
    key=$(hash_of "$dockerfile" "$@")
    key=$(printf '%s\n' "$base_id" "$key" | sha256sum | cut -c1-16)
    tag="$name:$key"
    if docker image inspect "$tag" >/dev/null 2>&1; then
        log "$tag is up to date"
    else
        log "building $tag (log: $CACHE/$name.build.log)"
        mkdir -p "$CACHE"
        if ! "${DOCKER_BUILD[@]}" --network host --build-arg "BASE_IMAGE=$base" -f "$dockerfile" \
            -t "$tag" "$context" >"$CACHE/$name.build.log" 2>&1; then
            tail -30 "$CACHE/$name.build.log" >&2
            return 1
        fi
    fi
    docker tag "$tag" "$name:latest"
    echo "$tag"
}

# Builds that download from PyPI trust what this machine trusts (an intercepting proxy's CA,
# say): the builder stages read docker/build-ca/ and the final images never carry it.
cp /etc/ssl/certs/ca-certificates.crt docker/build-ca/ca-certificates.crt 2>/dev/null || true

python_base=$(root_image python "python3,python3-venv,ca-certificates")
if [ "${SESSIONFLOW_ONLY_BASE:-}" = python ]; then
    echo "$python_base"
    exit 0  # .ci/docker.sh's probe: one root, imported, before building the rest
fi

# The other two roots bootstrap in the background while the python images build.
roots=$(mktemp -d)
trap 'rm -rf "$roots"' EXIT
root_image postgres "postgresql-15" >"$roots/postgres" &
postgres_job=$!
root_image nginx "nginx-light" >"$roots/nginx" &
nginx_job=$!

build_image sessionflow Dockerfile . "$python_base" \
    .dockerignore pyproject.toml uv.lock README.md sessionflow sql docker/build-ca
# The S3-compatible store: s3rver (npm) on Node.js from PyPI, on the python root.
build_image sessionflow-s3 docker/s3/Dockerfile docker "$python_base" docker/s3 docker/build-ca

wait "$postgres_job" || { echo "the postgresql root failed" >&2; exit 1; }
wait "$nginx_job" || { echo "the nginx root failed" >&2; exit 1; }
build_image sessionflow-postgres docker/postgres/Dockerfile docker/postgres "$(cat "$roots/postgres")" \
    docker/postgres
docker tag sessionflow-postgres:latest sessionflow-test-postgres:latest
build_image sessionflow-proxy docker/proxy/Dockerfile docker/proxy "$(cat "$roots/nginx")" docker/proxy

#!/usr/bin/env bash
# Build an onnxforge image.
#
#   containers/build.sh cpu [--engine podman|docker]   build onnxforge-cpu:<lock sha256[:12]> + :latest
#   containers/build.sh cuda [...]                     onnxforge-cuda from envs/jax-cuda.lock.txt
#   containers/build.sh maxtext [...]                  onnxforge-maxtext from envs/maxtext.lock.txt
#                                                      (its Python 3.12 base must be pullable)
#   (one containers/Dockerfile: the flavor picks the lock, the base and the interpreter)
#   containers/build.sh podman-conf                    print the containers.conf podman needs here
#                                                      (empty when the defaults work); use it as
#                                                      CONTAINERS_CONF=... podman run ...
#
# Environment:
#   BASE_IMAGE           base image; unset: a local Debian bookworm minbase made with mmdebstrap
#                        and imported once as localhost/onnxforge-base:bookworm (reused by tag;
#                        remove that image to refresh it)
#   DEBIAN_MIRROR        mirror for mmdebstrap (default http://deb.debian.org/debian)
#   WHEELS_DIR           extra wheels for pip (default /opt/wheels, used when it exists)
#   PIP_EXTRA_INDEX_URL  passed as a build arg, e.g. https://download.pytorch.org/whl/cpu
#   HOST_CA              CA bundle given to pip as a build secret (never stored in the image;
#                        default /etc/ssl/certs/ca-certificates.crt when it exists)
#   CONTAINERS_CONF      podman: used as is when set; else one with ulimits is written when needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
base_tag=localhost/onnxforge-base:bookworm

die() { echo "build.sh: $*" >&2; exit 1; }

# Rootful podman gives containers nofile=1048576 and nproc=4194304 unless told otherwise; where
# the host's hard limits are lower and podman may not raise them (no CAP_SYS_RESOURCE), runc
# fails with "error setting rlimit type 7/6: operation not permitted". nproc must also stay at or
# below kernel.pid_max (measured: 32768 works where 32769 fails).
podman_conf() {
    [[ -n "${CONTAINERS_CONF:-}" ]] && { echo "$CONTAINERS_CONF"; return; }
    local nofile nproc pid_max
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 4194304)
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited || $nproc -gt $pid_max ]] && nproc=$pid_max
    if ((nofile >= 1048576 && nproc >= 4194304)); then
        return
    fi
    local dir="${ONNXFORGE_CONF_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/onnxforge}"
    mkdir -p "$dir"
    local conf="$dir/containers.conf" text
    text=$(printf '# written by onnxforge containers/build.sh: ulimits within this host'"'"'s hard limits\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
        "$nofile" "$nofile" "$nproc" "$nproc")
    [[ -f $conf && "$(cat "$conf")" == "$text" ]] || printf '%s\n' "$text" >"$conf"
    echo "$conf"
}

flavor=""
engine=""
while (($#)); do
    case $1 in
        --engine) engine=${2:?--engine needs podman or docker}; shift 2 ;;
        --engine=*) engine=${1#*=}; shift ;;
        podman-conf) podman_conf; exit 0 ;;
        -h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) [[ -z $flavor ]] || die "one flavor at a time"; flavor=$1; shift ;;
    esac
done
[[ -n $flavor ]] || die "usage: $0 cpu|cuda|maxtext [--engine podman|docker]"
dockerfile="$here/Dockerfile"
# Each flavor is one environment's lock in the same Dockerfile (see its header).
maxtext_base=docker.io/library/python:3.12-slim-bookworm@sha256:782412e85d0f0984994c290652577d4018aff08145c85b262bb63dc0c7522254
flavor_args=(--build-arg "FLAVOR=$flavor")
case $flavor in
    cpu) environment=jax ;;
    cuda) environment=jax-cuda ;;
    maxtext)
        environment=maxtext
        flavor_args+=(--build-arg PYTHON=python3.12 --build-arg PYTHON_PACKAGES=) ;;
    *) die "no such flavor: $flavor (cpu, cuda or maxtext)" ;;
esac
flavor_args+=(--build-arg "ENVIRONMENT=$environment")
if [[ -z $engine ]]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null; then engine=docker
    else die "neither podman nor docker found (run: make system-deps)"; fi
fi
case $engine in podman|docker) ;; *) die "--engine must be podman or docker" ;; esac
command -v "$engine" >/dev/null || die "$engine not found (run: make system-deps)"

ulimit_args=()
if [[ $engine == podman ]]; then
    conf=$(podman_conf)
    if [[ -n $conf ]]; then
        export CONTAINERS_CONF=$conf
        echo "build.sh: CONTAINERS_CONF=$conf"
        # RUN steps get the same limits
        while read -r limit; do ulimit_args+=(--ulimit "$limit"); done < <(
            sed -n 's/^default_ulimits *= *\[\(.*\)\]/\1/p' "$conf" | tr -d '" ' | tr ',' '\n')
    fi
fi

# The flavor's lock (the Dockerfile installs the same file; the tag and LOCK_SHA256 are its hash).
lock="$root/envs/$environment.lock.txt"
[[ -f $lock ]] || die "no lock for flavor $flavor ($lock)"
lock_sha=$(sha256sum "$lock" | cut -d' ' -f1)
image=onnxforge-$flavor
tag=${lock_sha:0:12}
started=$SECONDS

# --- base image ---------------------------------------------------------------------------
build_args=("${flavor_args[@]}")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    echo "build.sh: base $BASE_IMAGE"
elif [[ $flavor == maxtext ]]; then
    # Bookworm has no Python 3.12 (so no offline mmdebstrap base): the pinned python:3.12
    # image, from a registry.
    build_args+=(--build-arg "BASE_IMAGE=$maxtext_base")
    echo "build.sh: base $maxtext_base (pulled)"
else
    if "$engine" image inspect "$base_tag" >/dev/null 2>&1; then
        echo "build.sh: base $base_tag (cached)"
    else
        command -v mmdebstrap >/dev/null || die "mmdebstrap not found (run: make system-deps)"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        t0=$SECONDS
        echo "build.sh: making $base_tag with mmdebstrap (minbase, bookworm)"
        # Like debian:*-slim: no docs, man pages or translations (dpkg keeps these excludes,
        # so the image's own apt installs skip them too).
        mmdebstrap --variant=minbase --quiet \
            --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            bookworm "$tmp/base.tar" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
        "$engine" import --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$base_tag" >/dev/null
        rm -f "$tmp/base.tar"
        echo "build.sh: base built and imported in $((SECONDS - t0)) s"
    fi
    build_args+=(--build-arg "BASE_IMAGE=$base_tag")
fi

# --- build context: only what the image needs, as git sees it (no .venv, results, caches) --
ctx=$(mktemp -d)
trap 'rm -rf "$ctx" ${tmp:+"$tmp"}' EXIT
paths=(Snakefile config.yaml pyproject.toml README.md envs workflow)
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard -- "${paths[@]}" \
        | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$ctx" -xf -
else
    tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' -cf - "${paths[@]}" \
        | tar -C "$ctx" -xf -
fi

build_args+=(--build-arg "LOCK_SHA256=$lock_sha")
[[ -n "${PIP_EXTRA_INDEX_URL:-}" ]] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
# Extra wheels go into the context's wheels/ (empty when there are none): docker's built-in
# BuildKit (20.10) has no --build-context. Hard links where the file system allows.
wheels=${WHEELS_DIR:-/opt/wheels}
mkdir "$ctx/wheels"
if [[ -d $wheels ]]; then
    cp -rl "$wheels/." "$ctx/wheels/" 2>/dev/null || cp -r "$wheels/." "$ctx/wheels/"
fi
ca=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
[[ -f $ca ]] && build_args+=(--secret "id=hostca,src=$ca")

# --- build ---------------------------------------------------------------------------------
t0=$SECONDS
if [[ $engine == docker ]]; then export DOCKER_BUILDKIT=1; fi
"$engine" build "${ulimit_args[@]}" "${build_args[@]}" \
    -f "$dockerfile" -t "$image:$tag" -t "$image:latest" "$ctx"
echo "build.sh: image built in $((SECONDS - t0)) s (total $((SECONDS - started)) s)"

id=$("$engine" image inspect --format '{{.Id}}' "$image:$tag")
if [[ $engine == podman ]]; then
    digest=$(podman image inspect --format '{{.Digest}}' "$image:$tag")
    size=$(podman image inspect --format '{{.Size}}' "$image:$tag")
else
    digest=$(docker image inspect --format '{{join .RepoDigests " "}}' "$image:$tag")
    size=$(docker image inspect --format '{{.Size}}' "$image:$tag")
fi
echo "image:  $image:$tag ($image:latest)"
echo "id:     $id"
echo "digest: ${digest:-none (local build)}"
echo "size:   $size bytes ($((size / 1000000)) MB)"

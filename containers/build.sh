#!/usr/bin/env bash
# Build an onnxforge image.
#
#   containers/build.sh cpu [--engine podman|docker]   build onnxforge-cpu:<lock sha256[:12]> + :latest
#   containers/build.sh cuda [...]                     onnxforge-cuda from envs/jax-cuda.lock.txt
#   containers/build.sh maxtext [...]                  onnxforge-maxtext from envs/maxtext.lock.txt
#                                                      (Python 3.12: see BASE_IMAGE)
#   (one containers/Dockerfile: the flavor picks the lock, the base and the interpreter)
#   containers/build.sh podman-conf                    print the containers.conf podman needs here
#                                                      (empty when the defaults work); use it as
#                                                      CONTAINERS_CONF=... podman run ...
#
# Environment:
#   BASE_IMAGE           base image; unset: a local Debian bookworm minbase made with mmdebstrap
#                        and imported once as localhost/onnxforge-base:bookworm (reused by tag;
#                        remove that image to refresh it). maxtext, unset: the pinned
#                        python:3.12-slim-bookworm where it is here or its registry answers; else
#                        that minbase plus this machine's CPython 3.12 in /usr/local, imported once
#                        as localhost/onnxforge-base:bookworm-python<version>
#   BASE_PYTHON_PREFIX   that CPython 3.12 (an installed prefix built on bookworm; default the
#                        newest ~/.pyenv/versions/3.12.*)
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
        -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
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
# A Debian bookworm minbase made with mmdebstrap and imported as $1 (later args: more mmdebstrap
# options). Like debian:*-slim: no docs, man pages or translations (dpkg keeps these excludes,
# so the image's own apt installs skip them too).
make_debian_base() {
    local tag=$1; shift
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found (run: make system-deps)"
    local t0=$SECONDS
    echo "build.sh: making $tag with mmdebstrap (minbase, bookworm)"
    mmdebstrap --variant=minbase --quiet \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$@" bookworm "$tmp/base.tar" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    "$engine" import --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tmp/base.tar" "$tag" >/dev/null
    rm -f "$tmp/base.tar"
    echo "build.sh: base built and imported in $((SECONDS - t0)) s"
}

# The Debian package that ships the shared library at $1 (usr-merged paths: /usr/lib or /lib).
debian_package_of() {
    local path=$1 candidates
    candidates=("$path" "$(realpath "$path")")
    candidates+=("${candidates[0]#/usr}" "${candidates[1]#/usr}")
    for c in "${candidates[@]}"; do
        dpkg -S "$c" 2>/dev/null | head -1 | cut -d: -f1 && return
    done
    return 1
}

# The maxtext base where the pinned python:3.12 image cannot be pulled: the minbase plus an
# installed CPython 3.12 of this machine ($1, a prefix: pyenv's by default), copied to /usr/local
# as the python:3.12 images have it, with the Debian packages of the libraries its modules link
# (found with ldd and dpkg -S here: the interpreter must have been built on bookworm).
make_python_base() {
    local tag=$1 prefix=$2 stage="$tmp/python" lib libs=() packages=() pkg
    local pylib="$prefix/lib/python3.12"
    command -v dpkg >/dev/null || die "the local python base needs dpkg (a Debian host)"
    mkdir -p "$stage/bin" "$stage/lib/python3.12/site-packages" "$stage/include"
    cp -a "$prefix/bin/python3.12" "$stage/bin/"
    ln -s python3.12 "$stage/bin/python3"
    ln -s python3.12 "$stage/bin/python"
    cp -a "$prefix"/lib/libpython3*.so* "$stage/lib/"
    cp -a "$prefix/include/python3.12" "$stage/include/"
    # The standard library without its tests, Tk (no libtk in the base), IDLE and the static
    # libpython; site-packages empty (this machine's has its own pip and .pth files).
    tar -C "$pylib" -cf - --exclude=./test --exclude=./idlelib --exclude=./tkinter \
        --exclude=./turtledemo --exclude='./lib-dynload/_tkinter*' --exclude='*.a' \
        --exclude=./site-packages . | tar -C "$stage/lib/python3.12" -xf -
    cp "$pylib/site-packages/README.txt" "$stage/lib/python3.12/site-packages/" 2>/dev/null || true
    while read -r lib; do
        [[ $lib == "$prefix"/* ]] && continue
        pkg=$(debian_package_of "$lib") || die "no Debian package ships $lib (needed by $prefix)"
        packages+=("$pkg")
    done < <(for f in "$stage"/lib/libpython3.12.so.1.0 "$stage"/lib/python3.12/lib-dynload/*.so; do
                 ldd "$f" | awk '/=>/ { print $3 }'
             done | sort -u)
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" ca-certificates | sort -u)
    echo "build.sh: python $prefix -> /usr/local; Debian packages: ${packages[*]}"
    # Check in the new root: the interpreter runs from /usr/local (its RUNPATH names $prefix,
    # which the base lacks: ldconfig's cache finds libpython), every extension module loads,
    # venv and ensurepip work.
    local check='import sys, os, glob, importlib
assert sys.prefix == "/usr/local", sys.prefix
for so in glob.glob(os.path.join(sys.prefix, "lib/python3.12/lib-dynload/*.so")):
    importlib.import_module(os.path.basename(so).split(".")[0])
import ssl, ctypes, sqlite3, lzma, bz2, zlib, hashlib, uuid, readline, curses, decimal
print("build.sh: python", sys.version.split()[0], "works in the base,", ssl.OPENSSL_VERSION)'
    make_debian_base "$tag" --include="$(IFS=,; echo "${packages[*]}")" \
        --customize-hook="sync-in $stage /usr/local" \
        --customize-hook='chroot "$1" ldconfig' \
        --customize-hook="chroot \"\$1\" /usr/local/bin/python3 -c '$check'" \
        --customize-hook='chroot "$1" /usr/local/bin/python3 -m venv --without-pip /tmp/venv-check' \
        --customize-hook='chroot "$1" /usr/local/bin/python3 -m ensurepip --version' \
        --customize-hook='rm -rf "$1/tmp/venv-check"'
    rm -rf "$stage"
}

# Whether the pinned base's registry answers (any HTTP status counts; none within 10 s: no).
registry_reachable() {
    local host=${1%%/*} code
    [[ $host == docker.io ]] && host=registry-1.docker.io
    command -v curl >/dev/null || return 1
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "https://$host/v2/" 2>/dev/null) || true
    [[ -n $code && $code != 000 ]]
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
build_args=("${flavor_args[@]}")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base=$BASE_IMAGE
    echo "build.sh: base $base"
elif [[ $flavor == maxtext ]]; then
    # Bookworm has no Python 3.12: the pinned python:3.12 image where it is here or its
    # registry answers; else a local one (minbase + this machine's CPython 3.12).
    if "$engine" image inspect "$maxtext_base" >/dev/null 2>&1 || registry_reachable "$maxtext_base"; then
        base=$maxtext_base
        echo "build.sh: base $base"
    else
        prefix=${BASE_PYTHON_PREFIX:-$(ls -d "$HOME"/.pyenv/versions/3.12.* 2>/dev/null | sort -V | tail -1)}
        [[ -n $prefix && -x $prefix/bin/python3.12 ]] \
            || die "no registry for $maxtext_base and no local CPython 3.12: set BASE_PYTHON_PREFIX or BASE_IMAGE"
        version=$("$prefix/bin/python3.12" -c 'import platform; print(platform.python_version())')
        base=$base_tag-python$version
        if "$engine" image inspect "$base" >/dev/null 2>&1; then
            echo "build.sh: base $base (cached; no registry for $maxtext_base)"
        else
            echo "build.sh: no registry for $maxtext_base: a local base with $prefix"
            make_python_base "$base" "$prefix"
        fi
    fi
else
    base=$base_tag
    if "$engine" image inspect "$base" >/dev/null 2>&1; then
        echo "build.sh: base $base (cached)"
    else
        make_debian_base "$base"
    fi
fi
build_args+=(--build-arg "BASE_IMAGE=$base")

# --- build context: only what the image needs, as git sees it (no .venv, results, caches) --
ctx=$(mktemp -d)
trap 'rm -rf "$ctx" "$tmp"' EXIT
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

#!/usr/bin/env bash
# Build the tunmesh container image with podman, without pulling anything from an image registry.
#
#   bash contrib/container/build.sh            # base image only if missing, then the tunmesh image
#
# 1. The Dockerfile's base (`FROM`, docker.io/library/debian:bookworm-slim) is made locally when podman does not
#    have it yet, like the registry's slim image: `debootstrap --variant=minbase` (Debian bookworm) with the slim
#    variant's dpkg excludes (no docs, man pages, locales), imported with `podman import` under that name. No
#    Python in it: the Dockerfile installs Debian's python3, as it must on the registry image. About a minute,
#    once; the image stays cached.
# 2. `podman build --pull=never` builds the Dockerfile (apt-get and pip inside RUN steps reach the package
#    registries through --network host; the host's CA bundle is mounted at build time only). A first build takes
#    2-5 minutes on a 2-core machine (pip compiles python-pytun); an unchanged tree rebuilds from the layer cache
#    in seconds.
# 3. It prints the image name and size.
#
# Environment: TUNMESH_IMAGE (default localhost/tunmesh:dev), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# PODMAN_RUNTIME (default runc: crun refuses some hybrid cgroup hosts), TUNMESH_REBUILD_BASE=1 to remake the base.
# Needs root (or a working rootless podman), podman and, for the base, debootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${TUNMESH_IMAGE:-localhost/tunmesh:dev}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
runtime=${PODMAN_RUNTIME:-runc}
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
ca_bundle=/etc/ssl/certs/ca-certificates.crt

for tool in podman; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (Debian: apt-get install podman runc debootstrap)" >&2; exit 1; }
done

if [ "${TUNMESH_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$base"; then
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
    rootfs=$(mktemp -d /var/tmp/tmt-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build.sh: making base image $base with debootstrap (bookworm, minbase) from $mirror"
    start=$SECONDS
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    # What the registry's slim variant leaves out, for this image's files and for every later apt-get install.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
SLIM
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/* \
           "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
    # An imported tar has no config: give it the PATH and command of the registry image.
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    echo "build.sh: base image $base made in $((SECONDS - start)) s"
fi

previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
start=$SECONDS
build_args=(--pull=never --format docker --network host --runtime "$runtime"
            --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 -t "$image" -f Dockerfile)
# Where HTTPS goes through an intercepting proxy (this sandbox), pip needs the host's CA bundle: mounted for the
# build only, beside the image's own bundle (a mount over it would break the ca-certificates package's setup).
if [ -r "$ca_bundle" ]; then
    build_args+=(-v "$ca_bundle:/run/host-ca-bundle.crt:ro" --build-arg PIP_CERT=/run/host-ca-bundle.crt)
fi
podman build "${build_args[@]}" .
echo "build.sh: built $image in $((SECONDS - start)) s"
# The image this build replaced, once it has no name left, with its layers no other image uses (not the new
# build's cache), so repeated builds do not pile up untagged images. Kept while a container uses it.
if [ -n "$previous" ] && [ "$(podman image inspect --format '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "build.sh: image $image: $size bytes ($((size / 1000000)) MB)"

# tunmesh sidecar image: Debian bookworm with the distribution's Python 3.11 and a venv in /opt/tunmesh.
#
# Build (no image registry needed; makes the base image locally when missing): bash contrib/container/build.sh
# That runs: podman build --pull=never --format docker --network host -t localhost/tunmesh:dev .
# (--format docker keeps the HEALTHCHECK, which the OCI image format has no field for.)
#
# Stage 1 compiles the venv (gcc and python3-dev stay in this stage). Stage 2 is the runtime: python3 and the
# venv, no compiler, no pip cache, no apt lists.
#
# Runtime user: the image carries an unprivileged user `tunmesh` (uid/gid 10001). The node process starts as
# root with CAP_NET_ADMIN only long enough to create the TUN device in the pod's network namespace and bind its
# port, then drops to `process.uid` (set it to 10001 for this image): setgroups([]), setgid, setuid,
# PR_SET_NO_NEW_PRIVS, and it verifies that regaining root fails. Run the container with
#   --cap-drop ALL --cap-add NET_ADMIN --cap-add SETUID --cap-add SETGID --device /dev/net/tun --read-only
# (Kubernetes: securityContext.capabilities.add [NET_ADMIN, SETUID, SETGID], a /dev/net/tun hostPath or a
# device plugin, and readOnlyRootFilesystem: true). Config files: root-owned, group 10001, mode 0640 (root
# reads them before the drop without CAP_DAC_OVERRIDE, the node after it). See docs/container.md and
# docs/deployment.md.

FROM docker.io/library/debian:bookworm-slim AS build
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/tunmesh
WORKDIR /src
# Dependencies first, in their own layer: a source change does not download or compile them again.
# PIP_CERT (optional build arg): a CA bundle for pip behind an intercepting proxy; build.sh passes the host's.
ARG PIP_CERT
COPY setup.py contrib/container/requirements.py ./
RUN python3 requirements.py setup.py > requirements.txt \
 && /opt/tunmesh/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} -r requirements.txt "setuptools>=64" wheel
COPY pyproject.toml README.md ./
COPY tunmesh ./tunmesh
COPY twisted ./twisted
# setup.py data_files: the man page and the shell completions (generated, committed)
COPY docs/man ./docs/man
COPY contrib/completion ./contrib/completion
# Then the package, offline (the build tools came with the dependencies); pip, setuptools, wheel and the
# dependencies' own test suites are not needed at run time.
RUN /opt/tunmesh/bin/pip install --no-deps --no-build-isolation --no-index . \
 && /opt/tunmesh/bin/pip check \
 && /opt/tunmesh/bin/pip uninstall -y wheel setuptools pip \
 && find /opt/tunmesh/lib -depth -type d \( -name test -o -name tests \) -path "*/site-packages/*" -exec rm -rf {} + \
 && /opt/tunmesh/bin/python -c "import tunmesh.service, tunmesh.cli, twisted.plugins.tunmesh_plugin"

FROM docker.io/library/debian:bookworm-slim AS runtime
ENV PATH=/opt/tunmesh/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 tunmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tunmesh \
 && mkdir -p /etc/tunmesh
COPY --from=build /opt/tunmesh /opt/tunmesh
# Write the twisted plugin cache now: the root filesystem is read-only at run time.
RUN python3 -c "from twisted.plugin import getPlugins, IPlugin; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))" \
 && tunmesh example-config > /etc/tunmesh-example-config.yaml \
 && tunmesh health --help >/dev/null
ENV TUNMESH_CONFIG_PATH=/etc/tunmesh/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 4567
# `tunmesh health` reads the same config as the node: listen address and port, TLS trust.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["tunmesh", "health"]
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "tunmesh"]

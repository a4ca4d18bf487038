# tunmesh sidecar image.
#
# Stage 1 builds wheels for tunmesh and every dependency (compilers stay in this stage).
# Stage 2 is a slim runtime with only the wheels installed, no compiler, no pip cache.
#
# Runtime user: the image carries an unprivileged user `tunmesh` (uid/gid 10001). The node process starts as
# root with CAP_NET_ADMIN only long enough to create the TUN device in the pod's network namespace and bind its
# port, then drops to `process.uid` (set it to 10001 for this image): setgroups([]), setgid, setuid,
# PR_SET_NO_NEW_PRIVS, and it verifies that regaining root fails. Run the container with
#   --cap-drop ALL --cap-add NET_ADMIN --cap-add SETUID --cap-add SETGID --device /dev/net/tun
# (Kubernetes: securityContext.capabilities.add [NET_ADMIN, SETUID, SETGID], a /dev/net/tun hostPath or a
# device plugin, and readOnlyRootFilesystem: true). See docs/deployment.md.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY tunmesh ./tunmesh
COPY twisted ./twisted
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tunmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tunmesh
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels tunmesh \
 && rm -rf /wheels \
 && python -c "from twisted.plugin import getPlugins, IPlugin; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))" \
 && tunmesh example-config > /etc/tunmesh-example-config.yaml
ENV TUNMESH_CONFIG_PATH=/etc/tunmesh/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 4567
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import ssl,urllib.request as u; c=ssl._create_unverified_context(); u.urlopen('https://127.0.0.1:4567/health', context=c, timeout=2)" || exit 1
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "tunmesh"]

# Canopy's image: one image for every role (`canopy agent`, `canopy origin`, the CLI),
# production dependencies only, run as the unprivileged user `canopy`.
#
#   docker build -t canopy .               on a host that reaches Docker Hub (the official Node image)
#   scripts/docker-images.sh canopy        on a base built from Debian's packages (no Docker Hub needed)
#
# Targets: `canopy` (the default) and `lab` (the same code plus iproute2, curl and ping, run as root:
# the lab's router shapes the WAN with tc and its hosts set routes; docs/LAB.md).
ARG BASE=node:24-bookworm-slim

FROM ${BASE} AS app
WORKDIR /opt/canopy
# The manifests first, so the production install is cached until a dependency changes.
COPY package.json package-lock.json ./
COPY packages/core/package.json packages/core/
COPY packages/origin/package.json packages/origin/
COPY packages/agent/package.json packages/agent/
COPY packages/client/package.json packages/client/
COPY packages/cli/package.json packages/cli/
# npm links the `canopy` command only when its file exists.
COPY packages/cli/bin packages/cli/bin/
COPY packages/lab/package.json packages/lab/
# EXTRA_CA: PEM certificates to trust for the install, for a registry reached through
# a TLS-intercepting proxy (scripts/docker-images.sh passes the host's local CAs).
ARG EXTRA_CA=""
RUN if [ -n "$EXTRA_CA" ]; then printf '%s\n' "$EXTRA_CA" > /tmp/extra-ca.pem; export NODE_EXTRA_CA_CERTS=/tmp/extra-ca.pem; fi \
 && npm ci --omit=dev --no-audit --no-fund && npm cache clean --force && rm -f /tmp/extra-ca.pem
COPY packages ./packages
ENV PATH=/opt/canopy/node_modules/.bin:$PATH

FROM app AS lab
RUN (command -v tc && command -v curl && command -v ping) >/dev/null || (apt-get update && apt-get install -y --no-install-recommends iproute2 curl iputils-ping && rm -rf /var/lib/apt/lists/*)
ENTRYPOINT ["/opt/canopy/packages/lab/docker/host.sh"]

FROM app AS canopy
RUN groupadd --system --gid 10001 canopy \
 && useradd --system --uid 10001 --gid canopy --home-dir /var/lib/canopy --shell /usr/sbin/nologin canopy \
 && mkdir -p /var/lib/canopy && chown canopy:canopy /var/lib/canopy
# Jobs, the block cache, the peer identity and the API socket (the origin's manifests
# under origin/): keep them in a volume so they outlive the container.
ENV CANOPY_STATE_DIR=/var/lib/canopy
VOLUME ["/var/lib/canopy"]
USER canopy
# 7373: the agent's peer port (libp2p; mDNS finds peers on 5353/udp multicast).
# 8080: `canopy origin`'s default port.
EXPOSE 7373 8080
# The agent answers on its control socket; for an origin container, give
# `--health-cmd` (README, "Docker").
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["node", "/opt/canopy/packages/cli/bin/canopy.js", "status"]
ENTRYPOINT ["node", "/opt/canopy/packages/cli/bin/canopy.js"]
CMD ["agent"]

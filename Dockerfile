# One image for every Canopy role: `canopy origin`, `canopy agent`, and the CLI.
FROM node:24-bookworm-slim
# iproute2: the lab's router shapes the WAN with tc, and its hosts set routes.
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/canopy
COPY package.json package-lock.json ./
COPY packages ./packages
RUN npm ci --no-audit --no-fund && npm cache clean --force
ENV PATH=/opt/canopy/node_modules/.bin:$PATH
ENTRYPOINT ["node", "/opt/canopy/packages/cli/bin/canopy.js"]

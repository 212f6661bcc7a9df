# One image for every Canopy role: `canopy origin`, `canopy agent`, and the CLI.
FROM node:24-bookworm-slim
WORKDIR /opt/canopy
COPY package.json package-lock.json ./
COPY packages ./packages
RUN npm ci --no-audit --no-fund && npm cache clean --force
ENV PATH=/opt/canopy/node_modules/.bin:$PATH
ENTRYPOINT ["node", "/opt/canopy/packages/cli/bin/canopy.js"]

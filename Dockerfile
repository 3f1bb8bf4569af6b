FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci refuses a lock file made on a registry that lacks other platforms' optional builds (see .ci/run)
RUN npm ci --no-audit --no-fund || npm install --no-audit --no-fund --no-save
COPY . .
RUN npm run build
ENV NODE_ENV=production
# the heap flags of bin/node-flags.ts (peak RSS per node, issue 13)
CMD ["node", "--max-semi-space-size=16", "--max-old-space-size=512", "dist/bin/start.js"]

/**
 * docker-compose.yml, built from the same topology as the namespace lab (addresses,
 * ports, WAN rate), so the two cannot drift: `npm run lab -- compose > docker-compose.yml`
 * writes it, and a test checks that the committed file is what this renders.
 */
import { ADDRESSES, CONTENT_PATH, LAB_DEFAULTS, ORIGIN_PORT, formatRate, tbfArguments } from './topology.ts'

const subnet = (address: string, prefix: number): string => `${address.split('.').slice(0, 3).join('.')}.0/${prefix}`

export function renderCompose (): string {
  const wanSubnet = subnet(ADDRESSES.origin, ADDRESSES.wanPrefix)
  const lanSubnet = subnet(ADDRESSES.routerLan, ADDRESSES.lanPrefix)
  // Agents get addresses from .64 to .127 of the branch subnet: clear of the router's
  // fixed address and of the extra hosts'.
  const agentRange = `${lanSubnet.split('.').slice(0, 3).join('.')}.64/26`
  const contentUrl = `http://${ADDRESSES.origin}:${ORIGIN_PORT}${CONTENT_PATH}`
  return `# The branch-office lab for Docker, generated from packages/lab/src/topology.ts by
# \`npm run lab -- compose > docker-compose.yml\` (the namespace lab and the automated
# compose runs, \`npm run lab -- <scenario> --engine compose\`, are built from the same
# description; a test checks this file matches it). Do not edit by hand.
#
#   origin (${ADDRESSES.origin}) --wan ${wanSubnet}-- router (tc tbf, WAN_RATE) --branch ${lanSubnet}-- agents (mDNS)
#
#   mkdir -p .lab/content && head -c 64M /dev/urandom > .lab/content${CONTENT_PATH}
#   docker compose up -d --build --scale agent=${LAB_DEFAULTS.agents}   (or, without Docker Hub:
#     scripts/docker-images.sh lab && docker-compose up -d --no-build --scale agent=${LAB_DEFAULTS.agents})
#   docker compose exec --index 1 agent canopy get ${contentUrl} -o /tmp${CONTENT_PATH}
#   docker compose exec --index 1 agent canopy peers
#   docker compose --profile bad-peer up -d liar          # a member that serves garbage
#   docker compose --profile unauthorized up -d intruder  # an agent without the key
#
# Only the lab networks are attached: internal (no gateway, no NAT), the host's side of
# each bridge without an address, IPv6 off; nothing reaches the host or the outside.
x-no-host-address: &no-host-address
  com.docker.network.bridge.inhibit_ipv4: "true"

x-canopy: &canopy
  build:
    context: .
    target: lab
  image: canopy:lab
  init: true
  cap_add: [NET_ADMIN]
  sysctls:
    net.ipv6.conf.all.disable_ipv6: "1"

x-branch-host: &branch-host
  <<: *canopy
  environment:
    LAB_ROUTE: default
    LAB_GATEWAY: ${ADDRESSES.routerLan}
    LAB_SWARM_KEY: /lab/org.key
    CANOPY_STATE_DIR: /var/lib/canopy
  volumes:
    - ./.lab:/lab
  depends_on: [router, origin]

services:
  origin:
    <<: *canopy
    command: [origin, /lab/content, --host, 0.0.0.0, --port, "${ORIGIN_PORT}", --state-dir, /var/lib/canopy-origin]
    environment:
      LAB_ROUTE: default
      LAB_GATEWAY: ${ADDRESSES.routerWan}
    volumes:
      - ./.lab/content:/lab/content:ro
    networks:
      wan:
        ipv4_address: ${ADDRESSES.origin}

  router:
    <<: *canopy
    entrypoint: [/bin/sh, /opt/canopy/packages/lab/docker/router.sh]
    sysctls:
      net.ipv4.ip_forward: "1"
      net.ipv6.conf.all.disable_ipv6: "1"
    environment:
      WAN_RATE: \${WAN_RATE:-${formatRate(LAB_DEFAULTS.wanBitsPerSecond)}}
      ROUTER_WAN: ${ADDRESSES.routerWan}
      ROUTER_LAN: ${ADDRESSES.routerLan}
    networks:
      wan:
        ipv4_address: ${ADDRESSES.routerWan}
      branch:
        ipv4_address: ${ADDRESSES.routerLan}

  agent:
    <<: *branch-host
    command: [agent, --swarm-key, /lab/org.key]
    networks: [branch]

  liar:
    <<: *branch-host
    profiles: [bad-peer]
    command: [node, /opt/canopy/packages/lab/bin/liar.ts, --url, ${contentUrl}, --swarm-key, /lab/org.key, --state-dir, /var/lib/canopy]
    networks:
      branch:
        ipv4_address: ${ADDRESSES.extra(1)}

  intruder:
    <<: *branch-host
    profiles: [unauthorized]
    command: [agent]
    networks:
      branch:
        ipv4_address: ${ADDRESSES.extra(2)}

networks:
  wan:
    internal: true
    driver_opts: *no-host-address
    ipam:
      config:
        - subnet: ${wanSubnet}
  branch:
    internal: true
    driver_opts: *no-host-address
    ipam:
      config:
        - subnet: ${lanSubnet}
          ip_range: ${agentRange}
`
}

/** The host's side of a lab bridge gets no address: containers cannot reach the host. */
const NO_HOST_ADDRESS = { 'com.docker.network.bridge.inhibit_ipv4': 'true' }

export interface RunComposeOptions {
  /** The compose project, and the prefix of every container's name. */
  project: string
  image: string
  /** The branch LAN's hosts: agents and extras, with the topology's addresses. */
  lanHosts: Array<{ name: string, address: string }>
  wanBitsPerSecond: number
  /** Mounted at the same path in every host, so paths mean the same inside and out. */
  workDir: string
  /** On every container and network, so that a lab's leftovers can be found. */
  labels: Record<string, string>
}

/**
 * The compose file of one automated run (compose-lab.ts): the same networks, router
 * and addresses as docker-compose.yml, one container per host of the namespace lab
 * (dc, agent-1..N, extras) that sets its route and waits for the harness to start
 * processes in it. JSON, which compose reads as YAML.
 */
export function renderRunCompose (options: RunComposeOptions): string {
  const wanSubnet = subnet(ADDRESSES.origin, ADDRESSES.wanPrefix)
  const lanSubnet = subnet(ADDRESSES.routerLan, ADDRESSES.lanPrefix)
  const common = {
    image: options.image,
    init: true,
    cap_add: ['NET_ADMIN'],
    labels: options.labels,
    sysctls: { 'net.ipv6.conf.all.disable_ipv6': '1' }
  }
  const host = (name: string, network: 'wan' | 'branch', address: string, gateway: string): object => ({
    ...common,
    container_name: `${options.project}-${name}`,
    hostname: name,
    command: ['sleep', 'infinity'],
    environment: { LAB_ROUTE: 'default', LAB_GATEWAY: gateway },
    volumes: [`${options.workDir}:${options.workDir}`],
    networks: { [network]: { ipv4_address: address } },
    depends_on: ['router']
  })
  const network = (subnetText: string): object => ({
    internal: true,
    labels: options.labels,
    driver_opts: NO_HOST_ADDRESS,
    ipam: { config: [{ subnet: subnetText }] }
  })
  const services: Record<string, object> = {
    router: {
      ...common,
      container_name: `${options.project}-router`,
      hostname: 'router',
      entrypoint: ['/bin/sh', '/opt/canopy/packages/lab/docker/router.sh'],
      sysctls: { ...common.sysctls, 'net.ipv4.ip_forward': '1' },
      environment: { WAN_TBF: tbfArguments(options.wanBitsPerSecond).join(' '), ROUTER_WAN: ADDRESSES.routerWan, ROUTER_LAN: ADDRESSES.routerLan },
      networks: { wan: { ipv4_address: ADDRESSES.routerWan }, branch: { ipv4_address: ADDRESSES.routerLan } }
    },
    dc: host('dc', 'wan', ADDRESSES.origin, ADDRESSES.routerWan)
  }
  for (const { name, address } of options.lanHosts) services[name] = host(name, 'branch', address, ADDRESSES.routerLan)
  return JSON.stringify({ services, networks: { wan: network(wanSubnet), branch: network(lanSubnet) } }, null, 2) + '\n'
}

// The Node.js/V8 flags `canopy agent` and `canopy origin` run with (see canopy.js for
// why), in their own file so that the benchmarks can start processes the same way.
/** The verbs that run a daemon, which re-executes itself with these flags. */
export const DAEMON_VERBS = new Set(['agent', 'origin'])

export const DEFAULT_DAEMON_FLAGS = ['--single-threaded-gc', '--external-memory-accounted-in-global-limit', '--max-semi-space-size=2', '--heap-growing-percent=50']

/** The flags for a daemon: CANOPY_DAEMON_NODE_FLAGS replaces the list ("" for V8's defaults). */
export function daemonFlags (env = process.env) {
  return env.CANOPY_DAEMON_NODE_FLAGS === undefined ? DEFAULT_DAEMON_FLAGS : env.CANOPY_DAEMON_NODE_FLAGS.split(' ').filter(Boolean)
}

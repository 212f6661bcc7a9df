/** Entry point of the `canopy` command (bin/canopy.js imports it after checking the Node.js version). */
import { run } from './cli.ts'

// `canopy jobs | head`: a closed pipe ends the output quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0)
  throw err
})

process.exitCode = await run(process.argv.slice(2))

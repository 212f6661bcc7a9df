/** `canopy version` and `canopy completion`: about the command itself. */
import { ExitCode, UsageError } from '../errors.ts'
import { flag, JSON_OPTION, out, printJson } from '../verb.ts'
import type { Verb } from '../verb.ts'
import { version } from '../version.ts'

export const versionVerb: Verb = {
  name: 'version',
  summary: 'print the version of canopy and of the Node.js runtime it runs on',
  help: `Usage: canopy version [--json]

Prints the version of canopy (the same as canopy --version). With --json, an
object with the Node.js version, the platform and the architecture as well.

Options:
  --json          print {"version", "node", "platform", "arch"} as JSON on stdout

Examples:
  canopy version
  canopy version --json | jq -r .version
`,
  options: { ...JSON_OPTION },
  positionals: { min: 0, max: 0, name: '' },
  async run (ctx) {
    if (flag(ctx.values, 'json')) printJson({ version: version(), node: process.versions.node, platform: process.platform, arch: process.arch })
    else out(`canopy ${version()}\n`)
    return ExitCode.Ok
  }
}

/** `canopy completion`, for the verbs `verbs` gives (cli.ts's list, which holds this verb: passed in, not imported). */
export function completionVerb (verbs: () => readonly Verb[]): Verb {
  return {
  name: 'completion',
  summary: 'print a shell completion script (bash or zsh)',
  help: `Usage: canopy completion bash|zsh

Prints a script that completes canopy's commands and options in the shell.
The Debian package installs both; from a checkout or the tarball:

Examples:
  canopy completion bash > ~/.local/share/bash-completion/completions/canopy
  source <(canopy completion bash)
  canopy completion zsh > "\${fpath[1]}/_canopy"
`,
  options: {},
  positionals: { min: 1, max: 1, name: 'the shell: bash or zsh' },
  async run (ctx) {
    const { bashCompletion, zshCompletion } = await import('../completion.ts')
    const shell = ctx.positionals[0]
    if (shell === 'bash') out(bashCompletion(verbs()))
    else if (shell === 'zsh') out(zshCompletion(verbs()))
    else throw new UsageError(`no completion for "${shell}": bash or zsh`, 'completion')
    return ExitCode.Ok
  }
  }
}

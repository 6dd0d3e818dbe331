import { type ChildProcess, execFile } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';

/** Runs a command to its end; rejects with `code`, `stdout` and `stderr` when it exits non-zero. */
export const run = promisify(execFile);

/**
 * A newcomer's environment: no DATABASE_* settings, no Frontegg settings, no NODE_ENV, listening on a
 * free port; `extra` on top.
 */
export function newcomerEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (name.startsWith('DATABASE_') || name === 'NODE_ENV' || name.startsWith('FRONTEGG_') || name.startsWith('VITEST')) {
      delete env[name];
    }
  }
  return { ...env, PORT: '0', ...extra };
}

/** Resolves with the URL from the server's "Listening" log line. */
export async function waitForListening(child: ChildProcess): Promise<string> {
  for await (const line of createInterface({ input: child.stdout! })) {
    const entry = line.startsWith('{') ? (JSON.parse(line) as { msg?: string; url?: string }) : {};
    if (entry.msg === 'Listening' && entry.url) return entry.url;
  }
  throw new Error('the server exited before listening');
}

/** Ctrl-C for a process started with `detached: true` (its own group: npm and the server), awaited. */
export async function interrupt(child: ChildProcess) {
  const exited = once(child, 'exit');
  process.kill(-child.pid!, 'SIGINT');
  await exited;
}

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { onLoopbackPort } from './tcp-proxy.js';

/** Where `apt-get install pgbouncer` puts it, else whatever `pgbouncer` is on the PATH. */
export function findPgBouncer(): string | undefined {
  for (const candidate of ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer']) {
    try {
      execFileSync(candidate, ['--version'], { stdio: 'ignore' });
      return candidate;
    } catch {}
  }
  try {
    execFileSync('pgbouncer', ['--version'], { stdio: 'ignore' });
    return 'pgbouncer';
  } catch {
    return undefined;
  }
}

async function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/**
 * A real PgBouncer on a free loopback port in front of the PostgreSQL of `upstreamUrl`, in
 * `poolMode`, with the settings the README gives for that mode. `urlFor(url)` is `url` with its
 * host and port replaced by PgBouncer's.
 */
export async function startPgBouncer(
  binary: string,
  {
    upstreamUrl,
    poolMode,
    poolSize = 20,
    ignoreStartupParameters = [],
  }: {
    upstreamUrl: string;
    poolMode: 'transaction' | 'session';
    poolSize?: number;
    /** Connection parameters it accepts and drops (refused otherwise), as an old README told users to set. */
    ignoreStartupParameters?: string[];
  },
) {
  const upstream = new URL(upstreamUrl);
  const dir = mkdtempSync(path.join(tmpdir(), 'pgbouncer-'));
  const port = await freePort();
  // Any database name is passed through, as the login user of the upstream URL.
  const user = decodeURIComponent(upstream.username || 'postgres');
  writeFileSync(
    path.join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${upstream.hostname} port=${upstream.port || 5432} user=${user}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = any',
      ...(ignoreStartupParameters.length ? [`ignore_startup_parameters = ${ignoreStartupParameters.join(',')}`] : []),
      `pool_mode = ${poolMode}`,
      `default_pool_size = ${poolSize}`,
      'max_client_conn = 2000',
      // As the README says: a server that failed a login is tried again after 1 s, not 15 s.
      'server_login_retry = 1',
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      '',
    ].join('\n'),
  );
  // PgBouncer refuses to run as root; as root (CI), it runs as the postgres user, which must read the folder.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
    chownSync(dir, uid, gid);
  }

  let child: ChildProcess | undefined;
  async function start() {
    const args = [...(asRoot ? ['-u', 'postgres'] : []), path.join(dir, 'pgbouncer.ini')];
    const started = spawn(binary, args, { stdio: 'ignore' });
    child = started;
    // Not left behind by a test process that ends without closing it (a failed hook, Ctrl-C).
    const stopWithUs = () => started.kill('SIGKILL');
    process.once('exit', stopWithUs);
    started.once('exit', () => process.off('exit', stopWithUs));
    for (let attempt = 0; attempt < 100; attempt += 1) {
      if (started.exitCode !== null) throw new Error(`pgbouncer exited (${started.exitCode}): ${log().slice(-2000)}`);
      if (await acceptsConnections(port)) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`pgbouncer did not listen on ${port}: ${log().slice(-2000)}`);
  }
  async function stop() {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = once(running, 'exit');
    // Ended at once, as a crash or a replaced container ends it: every connection closes. (SIGTERM
    // does that before PgBouncer 1.23 only; from then on it waits for the clients to leave.)
    running.kill('SIGKILL');
    await exited;
  }
  function log() {
    try {
      return readFileSync(path.join(dir, 'pgbouncer.log'), 'utf8');
    } catch {
      return '';
    }
  }

  await start();
  return {
    port,
    urlFor: (url: string) => onLoopbackPort(url, port),
    /** Ends it at once (SIGKILL: every connection drops) and starts it again on the same port. */
    async restart({ downForMs = 0 } = {}) {
      await stop();
      if (downForMs) await new Promise((resolve) => setTimeout(resolve, downForMs));
      await start();
    },
    log,
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export type PgBouncer = Awaited<ReturnType<typeof startPgBouncer>>;

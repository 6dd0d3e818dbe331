import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, expect, inject, it } from 'vitest';
import { createApiClient } from '../client/index.js';
import { allPages } from './support/paging.js';
import { newcomerEnv, run, waitForListening } from './support/processes.js';

const projectRoot = join(import.meta.dirname, '..');
const PAGE_CALLS = 10;

// Should the test time out, its `finally` never runs: the server must not outlive the run.
let running: ChildProcess | undefined;
afterAll(() => {
  running?.kill('SIGKILL');
});
// What the unread answers may add to the server's resident memory: ten pages of Ada's at a time
// (about 10 MB) and their buffers, where ten pages for every connection added about 300 MB.
const RSS_GROWTH_LIMIT_MB = 150;

/** A process's resident memory in MB, from /proc; undefined where there is no /proc (macOS). */
async function residentMegabytes(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  const kb = status && /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  return kb ? Number(kb) / 1024 : undefined;
}

it('a signed-in person with 100 messages of 32,000 emoji and 100 connections that never read cannot take down a server with a 256 MB heap', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'hostile-load-'));
  const databaseUrl = inject('databaseUrl');
  const env = newcomerEnv({
    NODE_OPTIONS: '--max-old-space-size=256',
    HTTP_IDLE_TIMEOUT_SECONDS: '2',
    // One person's hundred messages in a row, each stored at once: no assistant replies between.
    ASSISTANT_REPLIES: 'off',
    // The hundred writes come as fast as the server takes them: what is measured is memory, not
    // the write limit, which would refuse all but the first 20.
    RATE_LIMIT_WRITES_PER_MINUTE: '0',
    PGLITE_DATA_DIR: join(dataDir, 'pglite'),
    LOCAL_IDENTITY_KEY_FILE: join(dataDir, 'signing-key.json'),
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
  const server = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], { cwd: projectRoot, env });
  running = server;
  const sockets: net.Socket[] = [];
  try {
    const url = await waitForListening(server);
    const token = async (email: string, tenant: string) =>
      (await run(process.execPath, ['--import', 'tsx', 'server/mint-local-token.ts', '--email', email, '--tenant', tenant], { cwd: projectRoot, env })).stdout.trim();
    const [adaToken, graceToken] = await Promise.all([token('ada@hostile.example', 'hostile'), token('grace@other.example', 'other')]);
    const ada = createApiClient({ url: `${url}/trpc`, getToken: () => adaToken });
    const grace = createApiClient({ url: `${url}/trpc`, getToken: () => graceToken });

    // 100 messages of 128,000 bytes each.
    const { id: sessionId } = await ada.chat.getActiveSession.query();
    for (let n = 0; n < 100; n++) {
      await ada.chat.sendMessage.mutate({ sessionId, content: `${String(n).padStart(3, '0')}${'😀'.repeat(31_997)}` });
    }

    // One GET asking for ten pages of the newest 100 messages: a 1.4 KB URL.
    const input = Object.fromEntries(Array.from({ length: PAGE_CALLS }, (_, i) => [i, { json: { sessionId, limit: 100 } }]));
    const path = `/trpc/${Array(PAGE_CALLS).fill('chat.listMessages').join(',')}?batch=1&input=${encodeURIComponent(JSON.stringify(input))}`;

    const rssBefore = await residentMegabytes(server.pid!);
    // A hundred clients send it, one every 20 ms, and never read the answer. The first one's pages
    // wait in the server's buffers; they hold Ada's share of heavy calls until its connection
    // closes, so the others get 429s, not pages of their own.
    for (let i = 0; i < 100; i++) {
      const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${adaToken}\r\n\r\n`);
      socket.pause();
      sockets.push(socket);
      await sleep(20);
    }
    // What the server holds for them stays bounded (Linux shows a process's memory in /proc).
    const rssAfter = await residentMegabytes(server.pid!);
    if (rssBefore !== undefined && rssAfter !== undefined) expect(rssAfter - rssBefore).toBeLessThan(RSS_GROWTH_LIMIT_MB);

    // Sixteen more at once, read to the end: each call is a page or a 429, never a failure.
    const answers = await Promise.all(
      Array.from({ length: 16 }, async () => {
        const response = await fetch(`${url}${path}`, { headers: { authorization: `Bearer ${adaToken}` } });
        return (await response.json()) as { result?: unknown; error?: { json: { data: { code: string } } } }[];
      }),
    );
    const outcomes = answers.flat().map((item) => (item.result ? 'page' : item.error?.json.data.code));
    expect(outcomes).toHaveLength(16 * PAGE_CALLS);
    expect(outcomes.every((outcome) => outcome === 'page' || outcome === 'TOO_MANY_REQUESTS')).toBe(true);

    // The process is up, and answers everyone else.
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await grace.chat.getActiveSession.query()).title).toBe('New Chat');

    // Once the server has closed the connections that stopped reading (HTTP_IDLE_TIMEOUT_SECONDS),
    // Ada has her share back: paging reaches every message, oldest first.
    await sleep(3_000);
    const pages = await allPages((cursor) => ada.chat.listMessages.query({ sessionId, limit: 100, cursor }));
    expect(pages.length).toBeGreaterThan(1);
    expect(pages.reverse().flat().map((message) => message.content.slice(0, 3))).toEqual(
      Array.from({ length: 100 }, (_, n) => String(n).padStart(3, '0')),
    );
    expect(server.exitCode).toBeNull();
  } finally {
    for (const socket of sockets) socket.destroy();
    server.kill('SIGINT');
    if (server.exitCode === null) await once(server, 'exit');
    await rm(dataDir, { recursive: true, force: true });
  }
}, 120_000);

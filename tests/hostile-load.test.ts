import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, inject, it } from 'vitest';
import { createApiClient } from '../client/index.js';
import { allPages } from './support/paging.js';
import { newcomerEnv, run, waitForListening } from './support/processes.js';

const projectRoot = join(import.meta.dirname, '..');
const PAGE_CALLS = 10;

it('a signed-in person with 100 messages of 32,000 emoji cannot take the server down with a 256 MB heap', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'hostile-load-'));
  const databaseUrl = inject('databaseUrl');
  const env = newcomerEnv({
    NODE_OPTIONS: '--max-old-space-size=256',
    HTTP_IDLE_TIMEOUT_SECONDS: '2',
    PGLITE_DATA_DIR: join(dataDir, 'pglite'),
    LOCAL_IDENTITY_KEY_FILE: join(dataDir, 'signing-key.json'),
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
  const server = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], { cwd: projectRoot, env });
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

    // Ten clients send it and never read the answer.
    for (let i = 0; i < 10; i++) {
      const socket = net.connect(Number(new URL(url).port), '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${adaToken}\r\n\r\n`);
      socket.pause();
      sockets.push(socket);
    }
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
    expect(outcomes).toContain('page');

    // The process is up, and answers everyone else.
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await grace.chat.getActiveSession.query()).title).toBe('New Chat');
    // Paging still reaches every message, oldest first.
    const pages = await allPages((cursor) => ada.chat.listMessages.query({ sessionId, limit: 100, cursor }));
    expect(pages.length).toBeGreaterThan(1);
    expect(pages.reverse().flat().map((message) => message.content.slice(0, 3))).toEqual(
      Array.from({ length: 100 }, (_, n) => String(n).padStart(3, '0')),
    );

    // The clients that never read are disconnected (after HTTP_IDLE_TIMEOUT_SECONDS when their
    // answer is stuck), so nothing their answers held stays: reading now, each finds its end.
    await Promise.all(
      sockets.map(async (socket) => {
        socket.resume();
        if (!socket.destroyed) await once(socket, 'close');
      }),
    );
    expect(server.exitCode).toBeNull();
  } finally {
    for (const socket of sockets) socket.destroy();
    server.kill('SIGINT');
    if (server.exitCode === null) await once(server, 'exit');
    await rm(dataDir, { recursive: true, force: true });
  }
}, 120_000);

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { type IncomingMessage, request as httpRequest } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApiClient } from '../client/index.js';
import { watchEvents } from './support/events.js';
import { interrupt, newcomerEnv as newcomer, run, waitForListening } from './support/processes.js';

const projectRoot = join(import.meta.dirname, '..');
let dataDir: string;

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'start-test-'));
});
afterAll(() => rm(dataDir, { recursive: true, force: true }));

/** A newcomer's environment, with the embedded database and local identity key in this file's folder. */
const newcomerEnv = (extra: Record<string, string> = {}) =>
  newcomer({
    PGLITE_DATA_DIR: join(dataDir, 'pglite'),
    LOCAL_IDENTITY_KEY_FILE: join(dataDir, 'local-identity', 'signing-key.json'),
    ...extra,
  });

describe('the README start path', () => {
  // Three processes start (server, token, demo), and the demo waits for four streamed replies: 90 s.
  it('`npm start` serves /healthz, a token from `npm run token` gets a `me` answer, and `npm run demo` runs', async () => {
    // Its own process group, so the signal reaches npm and the server as Ctrl-C would.
    const child = spawn('npm', ['start'], { cwd: projectRoot, env: newcomerEnv(), detached: true });
    try {
      const url = await waitForListening(child);
      expect((await fetch(`${url}/healthz`)).status).toBe(200);

      const { stdout } = await run(
        'npm',
        ['run', '-s', 'token', '--', '--email', 'ada@example.com', '--tenant', 'acme', '--role', 'Admin'],
        { cwd: projectRoot, env: newcomerEnv() },
      );
      const token = stdout.trim();
      const me = await createApiClient({ url: `${url}/trpc`, getToken: () => token }).me.query();
      expect(me).toMatchObject({ role: 'admin', organization: { id: 'acme' }, user: { email: 'ada@example.com' } });

      // The walk-through the README offers, against this fresh server.
      const demo = await run('npm', ['run', '-s', 'demo', '--', '--url', url], { cwd: projectRoot, env: newcomerEnv() });
      expect(demo.stdout).toContain('✓ one organization, two members');
      expect(demo.stdout).toMatch(/tab 2 ← #\S+ message\.created "Thanks!"/);
      expect(demo.stdout).toContain('✓ the second tab received every question live, once each, in order');
      // The demo responder (no LLM_BASE_URL), streamed in and stopped.
      expect(demo.stdout).toMatch(/reply\.delta…: This is the demo assistant/);
      expect(demo.stdout).toContain('✓ the second tab saw 3 replies stream in and complete');
      expect(demo.stdout).toContain('✓ the second tab saw the reply end as stopReply said');
      expect(demo.stdout).toMatch(/page 4: user "How does tRPC share types/);
      expect(demo.stdout).toContain('✓ getSession: NOT_FOUND');
      expect(demo.stdout).toContain('✓ Ada still has exactly her 8 messages');
      expect(demo.stdout.trimEnd()).toMatch(/Done\.$/);
    } finally {
      await interrupt(child);
    }
  }, 90_000);

  it.each(['SIGTERM', 'SIGINT'] as const)(
    'on %s stops accepting connections, answers the request in flight, ends event streams with 503, and exits 0',
    async (signal) => {
      // On the run's PostgreSQL when there is one, so closing a real pool is part of it.
      const databaseUrl = inject('databaseUrl');
      const env = newcomerEnv(databaseUrl ? { DATABASE_URL: databaseUrl } : {});
      const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], { cwd: projectRoot, env });
      const exited = once(child, 'exit');
      const url = await waitForListening(child);
      const { stdout } = await run(process.execPath, ['--import', 'tsx', 'server/mint-local-token.ts', '--email', 'ada@example.com'], {
        cwd: projectRoot,
        env,
      });
      const token = stdout.trim();
      const session = await createApiClient({ url: `${url}/trpc`, getToken: () => token }).chat.getActiveSession.query();

      // Open event streams, which would never end by themselves: one read raw, one of the typed
      // client, whose EventSource reconnects when its stream ends.
      const stream = await fetch(`${url}/trpc/chat.events`, { headers: { authorization: `Bearer ${token}` } });
      const streamText = new Response(stream.body).text();
      const subscriber = watchEvents(createApiClient({ url: `${url}/trpc`, getToken: () => token }));
      await subscriber.connected();

      // A request that has arrived but not finished: its body is still coming when the signal does.
      const body = JSON.stringify({ json: { sessionId: session.id, content: 'sent across the shutdown' } });
      const request = httpRequest(`${url}/trpc/chat.sendMessage`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      });
      const response = once(request, 'response') as Promise<[IncomingMessage]>;
      request.write(body.slice(0, 20));
      await sleep(200);
      const signalledAt = Date.now();
      child.kill(signal);
      await sleep(300);

      // No new connections...
      await expect(fetch(`${url}/healthz`)).rejects.toThrow();
      // ...but the request in flight gets its answer.
      request.end(body.slice(20));
      const [answer] = await response;
      let text = '';
      for await (const chunk of answer) text += chunk;
      expect(answer.statusCode).toBe(200);
      expect(JSON.parse(text).result.data.json).toMatchObject({
        message: { content: 'sent across the shutdown', role: 'user' },
        // The demo assistant's reply, started: the shutdown then ends it as failed (interrupted).
        reply: { role: 'assistant', status: 'streaming' },
      });

      // The stream ended with a retryable error, so tRPC's client reconnects (elsewhere, behind a load balancer).
      const events = await streamText;
      expect(events).toContain('event: serialized-error');
      expect(events).toContain('SERVICE_UNAVAILABLE');

      const [code] = await exited;
      expect(code).toBe(0);
      // Well before the 10 s shutdown deadline, which exits 1.
      expect(Date.now() - signalledAt).toBeLessThan(5_000);
      subscriber.close();
    },
  );
});

describe('a bad configuration', () => {
  async function startExpectingFailure(env: Record<string, string>) {
    const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], {
      cwd: projectRoot,
      env: newcomerEnv(env),
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const [code] = await once(child, 'exit');
    return { code, lines: stderr.trim().split('\n') };
  }

  it('stops the start with one line naming the variable', async () => {
    const { code, lines } = await startExpectingFailure({ PORT: 'eighty' });
    expect(code).toBe(1);
    expect(lines).toEqual(['Invalid configuration: PORT must be a port number (0-65535)']);
  });

  it('refuses local identity mode in production', async () => {
    const { code, lines } = await startExpectingFailure({ NODE_ENV: 'production' });
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/FRONTEGG_BASE_URL is required when NODE_ENV=production/);
  });

  it('`npm run token` refuses to mint when a Frontegg environment is configured', async () => {
    const failure = await run('npm', ['run', '-s', 'token', '--', '--email', 'ada@example.com'], {
      cwd: projectRoot,
      env: newcomerEnv({ FRONTEGG_BASE_URL: 'https://app-example.frontegg.com' }),
    }).then(
      () => null,
      (error: { code: number; stderr: string }) => error,
    );
    expect(failure?.code).toBe(1);
    expect(failure?.stderr).toMatch(/sign in through Frontegg/);
  });
});

import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { and, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { type ApiClient, createApiClient } from '../client/index.js';
import { chatEvents } from '../db/schema.js';
import { type LanguageModelServer, startLanguageModelServer } from './support/language-model-server.js';
import { newcomerEnv, run, waitForListening } from './support/processes.js';
import { startServer as startInProcess } from '../server/app.js';
import { createLogger } from '../server/logger.js';
import { startIdentityProvider } from './support/identity-provider.js';
import { productionConfig } from './support/instances.js';
import { startTestApp } from './support/test-app.js';

const projectRoot = join(import.meta.dirname, '..');
const LEASE_SECONDS = 3;

let llm: LanguageModelServer;
let dataDir: string;
beforeAll(async () => {
  llm = await startLanguageModelServer();
  dataDir = await mkdtemp(join(tmpdir(), 'reply-recovery-'));
});
afterAll(async () => {
  await llm.close();
  await rm(dataDir, { recursive: true, force: true });
});

/** `npm start`'s server, asking the test's language model, on this run's database (or a PGlite folder of its own). */
function serverEnv(name: string) {
  const databaseUrl = inject('databaseUrl');
  return newcomerEnv({
    PGLITE_DATA_DIR: join(dataDir, name, 'pglite'),
    LOCAL_IDENTITY_KEY_FILE: join(dataDir, 'signing-key.json'),
    LLM_BASE_URL: llm.baseUrl,
    LLM_MODEL: 'recovery-model',
    LLM_REPLY_LEASE_SECONDS: String(LEASE_SECONDS),
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
}

async function startServer(env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], { cwd: projectRoot, env, stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await waitForListening(child);
  return { child, url };
}

async function kill(child: ChildProcess) {
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** A person whose reply is streaming on a server that is then killed mid-reply. */
async function replyOnAServerThatDies(env: NodeJS.ProcessEnv) {
  const { child, url } = await startServer(env);
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'server/mint-local-token.ts', '--email', 'ada@example.com'], {
    cwd: projectRoot,
    env,
  });
  const token = stdout.trim();
  const client = createApiClient({ url: `${url}/trpc`, getToken: () => token });
  const session = await client.chat.getActiveSession.query();
  const provider = llm.nextReply();
  const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Are you there?' });
  provider.text('I was about to say');
  await vi.waitFor(async () => {
    const items = (await client.chat.listMessages.query({ sessionId: session.id })).items;
    expect(items.at(-1)?.content).toBe('I was about to say');
  });
  await kill(child);
  return { token, sessionId: session.id, replyId: reply!.id };
}

async function expectFailedAsInterrupted(client: ApiClient, { sessionId, replyId }: { sessionId: string; replyId: string }) {
  // A lease, then a third of one for the next look: well within the wait allowed here.
  await vi.waitFor(
    async () => {
      const items = (await client.chat.listMessages.query({ sessionId })).items;
      expect(items.at(-1)).toMatchObject({ id: replyId, status: 'failed', content: 'I was about to say' });
    },
    { timeout: 4 * LEASE_SECONDS * 1000, interval: 100 },
  );
}

describe('a reply whose instance died is marked failed, with its text, within a bounded time', () => {
  // PostgreSQL only: a killed process holds PGlite's folder for 30 s. tests/server/replies.test.ts
  // covers a restart's sweep on PGlite in process.
  it.skipIf(!inject('databaseUrl'))('by the instance’s own restart (PostgreSQL only)', async () => {
    const env = serverEnv('restart');
    const { token, sessionId, replyId } = await replyOnAServerThatDies(env);
    const { child, url } = await startServer(env);
    try {
      const client = createApiClient({ url: `${url}/trpc`, getToken: () => token });
      await expectFailedAsInterrupted(client, { sessionId, replyId });
      // And the session takes a new message.
      const provider = llm.nextReply();
      const { reply } = await client.chat.sendMessage.mutate({ sessionId, content: 'Again?' });
      provider.text('Yes.');
      provider.finish();
      await vi.waitFor(async () => {
        const items = (await client.chat.listMessages.query({ sessionId })).items;
        expect(items.at(-1)).toMatchObject({ id: reply!.id, status: 'complete', content: 'Yes.' });
      });
    } finally {
      await kill(child);
    }
  }, 60_000);

  it.skipIf(!inject('databaseUrl'))('by another instance on the same PostgreSQL (PostgreSQL only: PGlite is one process’s)', async () => {
    // Another instance: it looks for abandoned replies every third of its own lease.
    const other = await startTestApp({ assistant: { baseUrl: llm.baseUrl, leaseMs: LEASE_SECONDS * 1000 } });
    try {
      const { sessionId, replyId } = await replyOnAServerThatDies(serverEnv('other'));
      await vi.waitFor(
        async () => {
          const logged = other.logs.find((line) => line.msg === 'Marked failed a reply whose instance stopped writing it' && line.messageId === replyId);
          expect(logged).toMatchObject({ sessionId });
        },
        { timeout: 4 * LEASE_SECONDS * 1000, interval: 100 },
      );
      // Announced to the member's subscribers, as every reply's end is.
      const [announced] = await other.db
        .select({ data: chatEvents.data })
        .from(chatEvents)
        .where(and(eq(chatEvents.messageId, replyId), eq(chatEvents.type, 'reply.failed')));
      expect(announced).toEqual({ data: { reason: 'interrupted' } });
    } finally {
      await other.close();
    }
  }, 60_000);

  it.skipIf(!inject('databaseUrl'))('by an instance running without an assistant (ASSISTANT_REPLIES=off; PostgreSQL only)', async () => {
    const idp = await startIdentityProvider();
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(JSON.parse(line)) } });
    const config = productionConfig(inject('databaseUrl')!, idp, { assistant: { mode: 'off', leaseMs: LEASE_SECONDS * 1000 } });
    const server = await startInProcess(config, log);
    try {
      const { sessionId, replyId } = await replyOnAServerThatDies(serverEnv('without-assistant'));
      await vi.waitFor(
        () => {
          const logged = lines.find((line) => line.msg === 'Marked failed a reply whose instance stopped writing it' && line.messageId === replyId);
          expect(logged).toMatchObject({ sessionId });
        },
        { timeout: 4 * LEASE_SECONDS * 1000, interval: 100 },
      );
    } finally {
      await server.close();
      await idp.close();
    }
  }, 60_000);
});

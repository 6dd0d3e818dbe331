import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type DatabaseHandle, DatabaseSetupError, openDatabase } from '../../db/database.js';
import { createDatabase } from '../../db/throwaway-database.js';
import { clientError } from '../support/errors.js';
import { type PgBouncer, findPgBouncer, startPgBouncer } from '../support/pgbouncer.js';
import { watchEvents } from '../support/events.js';
import { startLanguageModelServer } from '../support/language-model-server.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

const databaseUrl = inject('databaseUrl');
const pgbouncer = findPgBouncer();
const skipped = !databaseUrl
  ? ' (skipped: needs DATABASE_URL, a PostgreSQL server for PgBouncer to pool)'
  : !pgbouncer
    ? ' (skipped: no pgbouncer binary; `apt-get install pgbouncer`, as .ci/run does)'
    : '';

const STATEMENT_TIMEOUT_MS = 1_000;

if (databaseUrl && !pgbouncer && process.env.REQUIRE_PGBOUNCER) {
  throw new Error('REQUIRE_PGBOUNCER is set (as .ci/run sets it) but no pgbouncer binary was found');
}
// The reporter lists skipped suites without their titles: the reason, in one line of its own.
if (skipped) console.info(`PgBouncer suite${skipped}`);

describe.skipIf(!databaseUrl)('DATABASE_POOL_MODE=transaction, on a direct connection', () => {
  let database: DatabaseHandle;
  beforeAll(async () => {
    database = openDatabase({
      kind: 'postgres',
      url: databaseUrl as string,
      poolMode: 'transaction',
      statementTimeoutMs: 1_500,
      lockTimeoutMs: 700,
    });
    await database.migrate();
  });
  afterAll(() => database?.close());

  const settings = sql`select current_setting('statement_timeout') as statement, current_setting('lock_timeout') as lock,
    current_setting('idle_in_transaction_session_timeout') as idle`;

  it('passes the start-up check, as a session-mode connection to PostgreSQL itself does', async () => {
    await expect(database.checkSettings()).resolves.toBeUndefined();
    const direct = openDatabase({ kind: 'postgres', url: databaseUrl as string, statementTimeoutMs: 1_234 });
    try {
      await expect(direct.checkSettings()).resolves.toBeUndefined();
    } finally {
      await direct.close();
    }
  });

  it('runs each statement in a transaction of its own that sets the timeouts first', async () => {
    // No connection parameters carry them, and SET LOCAL lasts one transaction: a
    // statement sees them only when the settings went ahead of it in its own transaction.
    const rows = (await database.db.execute(settings)) as unknown as Record<string, unknown>[];
    expect(rows).toEqual([{ statement: '1500ms', lock: '700ms', idle: '3s' }]);
  });

  it('sets them in the transactions Drizzle opens too, and rolls a failed one back', async () => {
    const inside = await database.db.transaction(async (tx) => (await tx.execute(settings)) as unknown as Record<string, unknown>[]);
    expect(inside[0]).toMatchObject({ statement: '1500ms', lock: '700ms' });
    // The settings take no snapshot, so a transaction may still choose its isolation level.
    const isolated = await database.db.transaction(
      async (tx) => (await tx.execute(sql`select current_setting('transaction_isolation') as level`)) as unknown as Record<string, unknown>[],
      { isolationLevel: 'serializable', accessMode: 'read only' },
    );
    expect(isolated[0]).toEqual({ level: 'serializable' });
    const marker = `rolled back ${randomUUID()}`;
    await expect(
      database.db.transaction(async (tx) => {
        await tx.execute(sql`create temporary table rollback_probe (note text) on commit drop`);
        await tx.execute(sql`insert into rollback_probe values (${marker})`);
        await tx.execute(sql`select 1 / 0`);
      }),
    ).rejects.toThrow();
    // The connection went back to the pool usable, outside any transaction.
    const after = (await database.db.execute(settings)) as unknown as Record<string, unknown>[];
    expect(after[0]).toMatchObject({ statement: '1500ms' });
  });
});

describe.skipIf(skipped !== '')(`behind PgBouncer in transaction mode${skipped}`, () => {
  let database: Awaited<ReturnType<typeof createDatabase>>;
  let bouncer: PgBouncer;
  let pooled: DatabaseHandle;
  let app: TestApp;
  let http: Awaited<ReturnType<typeof startHttpServer>>;
  /** A session of the test's own on the database itself, past the pooler. */
  let direct: postgres.Sql;
  /** A session on another database of the same server, which can refuse connections to this one. */
  let admin: postgres.Sql;

  beforeAll(async () => {
    // A database of its own: the tests below end every connection to it, as a restart would.
    database = await createDatabase(databaseUrl as string, 'pgbouncer');
    bouncer = await startPgBouncer(pgbouncer as string, { upstreamUrl: database.url, poolMode: 'transaction', poolSize: 10 });
    pooled = openDatabase({
      kind: 'postgres',
      url: bouncer.urlFor(database.url),
      directUrl: database.url,
      poolMode: 'transaction',
      poolSize: 20,
      connectTimeoutSeconds: 2,
      statementTimeoutMs: STATEMENT_TIMEOUT_MS,
      lockTimeoutMs: 60_000,
    });
    // Migrations take their session lock through the direct URL.
    await pooled.migrate();
    app = await startTestApp({ database: pooled });
    http = await startHttpServer(app);
    direct = postgres(database.url, { max: 2, onnotice: () => {} });
    admin = postgres(databaseUrl as string, { max: 1, onnotice: () => {} });
  });
  afterAll(async () => {
    await http?.close();
    await app?.close();
    await direct?.end();
    await admin?.end();
    await bouncer?.close();
    await database?.drop();
  });

  it('answers every call of 20 people doing 20 rounds at once', async () => {
    const people = await Promise.all(Array.from({ length: 20 }, () => app.idp.mintToken({ claims: { sub: randomUUID() } })));
    const failures: unknown[] = [];
    const sent = new Map<string, string[]>();
    await Promise.all(
      people.map(async (token, person) => {
        const client = http.clientFor(token);
        const contents: string[] = [];
        for (let round = 0; round < 20; round += 1) {
          try {
            const session = await client.chat.getActiveSession.query();
            const content = `person ${person} round ${round}`;
            await client.chat.sendMessage.mutate({ sessionId: session.id, content });
            contents.push(content);
            const page = await client.chat.listMessages.query({ sessionId: session.id, limit: 5 });
            expect(page.items.at(-1)?.content).toBe(content);
            if (round === 19) sent.set(session.id, contents);
          } catch (error) {
            failures.push(error);
          }
        }
      }),
    );
    expect(failures).toEqual([]);
    for (const [sessionId, contents] of sent) {
      const stored = await direct`select content from chat_messages where session_id = ${sessionId} order by seq`;
      expect(stored.map((row) => row.content)).toEqual(contents);
    }
  });

  it('delivers live events: notified through the pooler, heard on DATABASE_DIRECT_URL', async () => {
    const client = http.clientFor(await app.idp.mintToken());
    const events = watchEvents(client);
    await events.connected();
    const session = await client.chat.getActiveSession.query();
    const { message } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'through PgBouncer' });
    await events.atLeast(3);
    expect(events.received[1]?.data).toEqual({ type: 'message.created', message });
    events.close();
    // PgBouncer in transaction mode would drop a LISTEN with the transaction: the listener is on PostgreSQL itself.
    const [listener] = await direct`select count(*)::int as n from pg_stat_activity
      where application_name = 'frontegg-trpc-chat listener' and datname = current_database() and client_port is not null`;
    expect(listener?.n).toBe(1);
  });

  it('streams an assistant reply through the pooler, and holds the per-organization cap there (its lock is per transaction)', async () => {
    const llm = await startLanguageModelServer();
    const withAssistant = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, maxRepliesPerOrganization: 1 } });
    const server = await startHttpServer(withAssistant);
    try {
      const tenantId = randomUUID();
      const [ada, grace] = await Promise.all(
        [0, 1].map(async () => server.clientFor(await app.idp.mintToken({ claims: { sub: randomUUID(), tenantId } }))),
      );
      const events = watchEvents(ada!);
      await events.connected();
      const session = await ada!.chat.getActiveSession.query();
      const provider = llm.nextReply();
      const { reply } = await ada!.chat.sendMessage.mutate({ sessionId: session.id, content: 'via PgBouncer' });
      await provider.request;
      const graceSession = await grace!.chat.getActiveSession.query();
      const refused = await clientError(grace!.chat.sendMessage.mutate({ sessionId: graceSession.id, content: 'me too' }));
      expect(refused.data?.code).toBe('TOO_MANY_REQUESTS');
      provider.text('Pooled ');
      provider.text('answer.');
      provider.finish({ usage: { input: 4, output: 2 } });
      await events.until(() => expect(events.types()).toContain('reply.completed'));
      expect(events.received.find((event) => event.data.type === 'reply.completed')?.data).toMatchObject({
        message: { id: reply!.id, content: 'Pooled answer.', status: 'complete' },
      });
      events.close();
    } finally {
      await server.close();
      await withAssistant.close();
      await llm.close();
    }
  });

  it('answers statements with and without parameters sent at once on a small pool', async () => {
    // Unwrapped, postgres.js pipelines statements without parameters on one connection, and the
    // pooler hands those after the first to other server connections: this hung.
    const small = openDatabase({
      kind: 'postgres',
      url: bouncer.urlFor(database.url),
      directUrl: database.url,
      poolMode: 'transaction',
      poolSize: 4,
    });
    try {
      const all = Promise.all(
        Array.from({ length: 2_000 }, (_, i) =>
          i % 2 ? small.db.execute(sql`select 1 as one`) : small.db.execute(sql`select ${i}::int as one`),
        ),
      );
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer within 15 s')), 15_000);
      });
      expect(await Promise.race([all, timedOut])).toHaveLength(2_000);
      clearTimeout(timer);
    } finally {
      await small.close();
    }
  });

  it('is found at start-up when the server runs in session mode behind it, with one line saying what to set', async () => {
    // The issue's set-up: the timeouts as connection parameters, which PgBouncer accepts and drops.
    const dropping = await startPgBouncer(pgbouncer as string, {
      upstreamUrl: database.url,
      poolMode: 'transaction',
      ignoreStartupParameters: ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout'],
    });
    const unaware = openDatabase({ kind: 'postgres', url: dropping.urlFor(database.url) });
    try {
      const refused = await unaware.checkSettings().then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(refused).toBeInstanceOf(DatabaseSetupError);
      expect((refused as Error).message).toMatch(
        /^DATABASE_URL's connections lost the \w+ sent when connecting \(0 ms, not \d+ ms\): a pooler .* Set DATABASE_POOL_MODE=transaction and DATABASE_DIRECT_URL [^\n]+$/,
      );
    } finally {
      await unaware.close();
      await dropping.close();
    }
    // Set as this suite sets it, the same pooler passes.
    await expect(pooled.checkSettings()).resolves.toBeUndefined();
    // A PgBouncer not told to drop them refuses the connection: said as plainly.
    const refusing = openDatabase({ kind: 'postgres', url: bouncer.urlFor(database.url), connectTimeoutSeconds: 2 });
    try {
      await expect(refusing.checkSettings()).rejects.toThrow(
        /^DATABASE_URL refused the connection parameter \w+: a pooler such as PgBouncer is in between\. Set DATABASE_POOL_MODE=transaction/,
      );
    } finally {
      await refusing.close();
    }
  });

  it('sets the timeouts in each transaction (SET LOCAL), never on the pooled server connection', async () => {
    const [inside] = (await app.db.execute(
      sql`select current_setting('statement_timeout') as statement, current_setting('lock_timeout') as lock`,
    )) as unknown as { statement: string; lock: string }[];
    expect(inside).toEqual({ statement: '1s', lock: '1min' });
    // Another client of the same pooler, on the same server connections, sees PostgreSQL's defaults.
    const neighbour = postgres(bouncer.urlFor(database.url), { max: 1, prepare: false, onnotice: () => {} });
    try {
      for (let i = 0; i < 10; i += 1) {
        const [row] = await neighbour`select current_setting('statement_timeout') as statement`;
        expect(row?.statement).toBe('0');
      }
    } finally {
      await neighbour.end();
    }
  });

  it('cancels a statement waiting on a lock after DATABASE_STATEMENT_TIMEOUT_MS, through the pooler', async () => {
    const client = http.clientFor(await app.idp.mintToken());
    const session = await client.chat.getActiveSession.query();
    const locked = direct.begin(async (tx) => {
      await tx`lock table chat_messages in exclusive mode`;
      const started = performance.now();
      const error = await clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content: 'behind the lock' }));
      return { error, elapsedMs: performance.now() - started };
    });
    const { error, elapsedMs } = await locked;
    expect(error.data?.httpStatus).toBe(503);
    // The lock timeout is a minute here: what ended the wait is the statement timeout.
    expect(elapsedMs).toBeGreaterThanOrEqual(STATEMENT_TIMEOUT_MS * 0.9);
    expect(elapsedMs).toBeLessThan(STATEMENT_TIMEOUT_MS + 4_000);
    const logged = app.logs.find((line) => line.msg === 'Request failed' && JSON.stringify(line.err).includes('"57014"'));
    expect(logged).toBeDefined();
    // Nothing was stored, and the next call goes through.
    expect(await direct`select 1 from chat_messages where content = 'behind the lock'`).toHaveLength(0);
    expect((await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'after the lock' })).message.content).toBe('after the lock');
  });

  /**
   * Eight writers send messages while `fault` happens; every call either succeeds or answers 503,
   * every acknowledged message is stored, and calls succeed afterwards. `someRefused`: the fault
   * is sure to meet calls in progress (a PgBouncer restart closes every client connection; a
   * PostgreSQL restart may find every server connection idle, and PgBouncer then holds new calls
   * until it is back).
   */
  async function writeThrough(fault: () => Promise<void>, { someRefused }: { someRefused: boolean }) {
    const token = await app.idp.mintToken();
    const client = http.clientFor(token);
    const session = await client.chat.getActiveSession.query();
    const acknowledged = new Map<string, string>();
    const refusals: (number | undefined)[] = [];
    let faultDone = false;
    let writesAfter = 0;
    let slowestRefusalMs = 0;

    async function writer(name: string) {
      for (let i = 0; !faultDone || writesAfter < 20; i += 1) {
        const content = `${name} #${i}`;
        const started = performance.now();
        try {
          const { message } = await client.chat.sendMessage.mutate({ sessionId: session.id, content });
          acknowledged.set(message.id, content);
          if (faultDone) writesAfter += 1;
        } catch (error) {
          refusals.push((error as { data?: { httpStatus?: number } }).data?.httpStatus);
          slowestRefusalMs = Math.max(slowestRefusalMs, performance.now() - started);
        }
      }
    }
    const writers = Promise.all(Array.from({ length: 8 }, (_, index) => writer(`writer ${index}`)));
    await new Promise((resolve) => setTimeout(resolve, 300));
    await fault();
    faultDone = true;
    await writers;

    if (someRefused) expect(refusals.length).toBeGreaterThan(0);
    expect(new Set(refusals)).toEqual(new Set(refusals.length ? [503] : []));
    // Within seconds: the connection silence limit (statement timeout + 5 s) bounds any wait.
    expect(slowestRefusalMs).toBeLessThan(STATEMENT_TIMEOUT_MS + 5_000);
    const stored = await direct`select id, content from chat_messages where id in ${direct([...acknowledged.keys()])}`;
    expect(new Map(stored.map((row) => [row.id as string, row.content as string]))).toEqual(acknowledged);
    expect((await client.chat.getActiveSession.query()).id).toBe(session.id);
  }

  it('answers 503 while PgBouncer restarts under load, loses no acknowledged write, and recovers without a restart of ours', async () => {
    await writeThrough(() => bouncer.restart({ downForMs: 500 }), { someRefused: true });
  });

  it('answers 503 while PostgreSQL restarts behind PgBouncer, loses no acknowledged write, and recovers', async () => {
    const name = new URL(database.url).pathname.slice(1);
    // What a restart does to this database's clients: every session ends ("terminating connection
    // due to administrator command", as in a fast shutdown) and new ones are refused until it is back.
    await writeThrough(async () => {
      await admin.unsafe(`alter database "${name}" allow_connections false`);
      // In the select list, so that it runs for this database's sessions only (a WHERE clause may
      // run it before the filter, on every session of the server).
      const ended = await admin`select application_name, pg_terminate_backend(pid) from pg_stat_activity where datname = ${name}`;
      // PgBouncer's server connections were among them (it passes the server's application_name on).
      expect(ended.map((row) => row.application_name)).toContain('frontegg-trpc-chat');
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      await admin.unsafe(`alter database "${name}" allow_connections true`);
    }, { someRefused: false });
  });
});

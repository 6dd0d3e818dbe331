import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import postgres from 'postgres';
import { claimPgliteDataDir } from './pglite-data-dir.js';
import * as schema from './schema.js';

/**
 * The database or a transaction: every data-access function accepts either.
 *
 * Statements that run on every request or every login are `.prepare()`d. Unprepared, postgres.js
 * first asks the server for the types of a statement's parameters and only then runs it: two
 * round trips. Prepared, it names the statement on each connection and, after its first use
 * there, runs it in one; PostgreSQL also plans it once per connection.
 */
export type Database = PgDatabase<PgQueryResultHKT, typeof schema>;

export interface DatabaseHandle {
  db: Database;
  kind: 'postgres' | 'pglite';
  /** Applies pending migrations; safe when several instances start at once. */
  migrate(): Promise<void>;
  /** Resolves when the database answers a trivial query. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export type DatabaseTarget =
  | {
      kind: 'postgres';
      url: string;
      poolSize?: number;
      /** How long opening a connection may take before the query fails. */
      connectTimeoutSeconds?: number;
      /** PostgreSQL cancels a statement running longer than this (`statement_timeout`). */
      statementTimeoutMs?: number;
      /**
       * PostgreSQL cancels a statement that waits longer than this for a row or table lock
       * (`lock_timeout`), so callers queueing on one person's rows cannot hold the pool.
       */
      lockTimeoutMs?: number;
    }
  /** `dataDir` undefined keeps the database in memory (tests). */
  | { kind: 'pglite'; dataDir?: string };

const migrationsFolder = fileURLToPath(new URL('./migrations', import.meta.url));

// Any constant works; it only has to be the same in every instance of this service.
const MIGRATION_LOCK_ID = 7_302_118_804;

export interface DatabaseObserver {
  /**
   * Called with the text of every statement the data-access code sends, through Drizzle's own
   * query logger: for counting statements per request in tests. The `begin` and `commit` the
   * drivers send around a transaction are not statements Drizzle sees.
   */
  onStatement?: ((text: string) => void) | undefined;
}

export function openDatabase(target: DatabaseTarget, observer: DatabaseObserver = {}): DatabaseHandle {
  return target.kind === 'postgres' ? openPostgres(target, observer) : openPglite(target.dataDir, observer);
}

function openPostgres(
  {
    url,
    poolSize = 10,
    connectTimeoutSeconds = 5,
    statementTimeoutMs = 5_000,
    lockTimeoutMs = 2_000,
  }: Extract<DatabaseTarget, { kind: 'postgres' }>,
  { onStatement }: DatabaseObserver,
): DatabaseHandle {
  // A live server answers every statement within statement_timeout (a result or an error), so
  // a connection silent for longer than that is lost, not busy.
  const silenceMs = statementTimeoutMs + 5_000;
  // `socket` is documented in postgres.js's README but missing from its types, so the options go
  // in as a variable (no excess-property check) rather than a literal.
  const options = {
    max: poolSize,
    connect_timeout: connectTimeoutSeconds,
    // Idle connections close before the silence limit can end them.
    idle_timeout: Math.max(1, Math.floor(silenceMs / 2_000)),
    // postgres.js waits this long before reconnecting after a failure, growing up to 20 s by
    // default; capped at 1 s so requests fail fast in an outage and recover at once after it.
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1),
    socket: connectWithSilenceLimit(silenceMs),
    // postgres.js would look up array types on every new connection, from a promise nobody
    // handles: a connection dropped during that lookup crashed the process (an unhandled
    // rejection). The schema has no PostgreSQL arrays, so there is nothing to look up.
    fetch_types: false,
    onnotice: () => {},
    connection: {
      application_name: 'frontegg-trpc-chat',
      statement_timeout: statementTimeoutMs,
      lock_timeout: lockTimeoutMs,
      // A transaction whose client went away must not hold its locks for long.
      idle_in_transaction_session_timeout: statementTimeoutMs * 2,
    },
  };
  const client = postgres(url, options);
  const db = drizzlePostgres(client, { schema, logger: statementLogger(onStatement) });
  return {
    db,
    kind: 'postgres',
    async migrate() {
      // A session-level advisory lock needs one connection for lock, migrations and unlock.
      const lockClient = postgres(url, { max: 1, connect_timeout: 5, onnotice: () => {} });
      try {
        await lockClient`select pg_advisory_lock(${MIGRATION_LOCK_ID})`;
        await migratePostgres(drizzlePostgres(lockClient), { migrationsFolder });
        await lockClient`select pg_advisory_unlock(${MIGRATION_LOCK_ID})`;
      } finally {
        await lockClient.end({ timeout: 5 });
      }
    },
    ping: () => ping(db),
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

function openPglite(dataDir: string | undefined, { onStatement }: DatabaseObserver): DatabaseHandle {
  const release = dataDir ? claimPgliteDataDir(dataDir) : () => {};
  const client = new PGlite(dataDir);
  const db = drizzlePglite(client, { schema, logger: statementLogger(onStatement) });
  return {
    db,
    kind: 'pglite',
    // PGlite lives inside this process, which holds its data folder, so no other instance can race.
    migrate: () => migratePglite(db, { migrationsFolder }),
    ping: () => ping(db),
    async close() {
      await client.close();
      release();
    },
  };
}

/** Drizzle's logger hears every statement sent, outside and inside transactions. */
function statementLogger(onStatement: DatabaseObserver['onStatement']) {
  return onStatement ? { logQuery: (text: string) => onStatement(text) } : false;
}

/**
 * A socket factory for postgres.js that destroys a connection after `silenceMs` without a byte
 * either way. Without it, a query on a connection whose server vanished (a failover, a dropped
 * network path) would wait for TCP to give up: many minutes. The failed query then answers
 * `SERVICE_UNAVAILABLE`, and the pool opens a new connection for the next one.
 */
function connectWithSilenceLimit(silenceMs: number) {
  let next = 0;
  return ({ host, port, path }: { host: string[]; port: number[]; path: string | false }) => {
    const index = next++ % host.length;
    const socket = path ? net.connect(path) : net.connect(port[index] ?? 5432, host[index]);
    socket.setTimeout(silenceMs, () => {
      const error = Object.assign(new Error(`No answer from the database for ${silenceMs} ms`), { code: 'ETIMEDOUT' });
      socket.destroy(error);
    });
    return socket;
  };
}

async function ping(db: Database): Promise<void> {
  await db.execute(sql`select 1`);
}

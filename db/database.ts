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
  /**
   * Resolves when statements run with the timeouts the server configured; else rejects with a
   * `DatabaseSetupError` saying what to change. A pooler that drops connection parameters between
   * a `session`-mode server and PostgreSQL is found this way before the first request.
   */
  checkSettings(): Promise<void>;
  /**
   * Calls `onNotification` with the payload of each notification on `channel`, heard on a
   * connection of its own (to `directUrl`: a transaction-mode pooler keeps no LISTEN), and
   * `onListening` each time listening starts: at first, and again whenever postgres.js has
   * reconnected it (what was sent meanwhile is lost). Resolves once listening.
   */
  listen(channel: string, onNotification: (payload: string) => void, onListening: () => void): Promise<Listener>;
  /**
   * The pool now: its size, the connections opening, running statements or holding a
   * transaction, and the statements and transactions waiting for one. Migrations and the LISTEN
   * connection are apart.
   */
  pool(): { size: number; inUse: number; waiting: number };
  close(): Promise<void>;
}

export interface Listener {
  /** Stops listening and closes the connection. */
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
      /**
       * `transaction`: `url` is a transaction-mode pooler (PgBouncer, Supavisor, Neon's pooled
       * URL, RDS Proxy), which gives a server connection for one transaction at a time. Then no
       * statement is prepared by name, every statement runs in a transaction of its own that first
       * sets the timeouts with `SET LOCAL`, and `directUrl` is required. `session` (default): a
       * direct connection or a session-mode pooler, with timeouts as connection parameters.
       */
      poolMode?: PoolMode;
      /**
       * A connection that keeps its session (direct, or a session-mode pooler) to the same
       * database, for what needs one: migrations, which hold an advisory lock. Default: `url`.
       */
      directUrl?: string;
    }
  /** `dataDir` undefined keeps the database in memory (tests). */
  | { kind: 'pglite'; dataDir?: string };

export type PoolMode = 'session' | 'transaction';

/** postgres.js with the pool's state, which patches/postgres+3.4.9.patch adds (upstream issue #443). */
type PostgresWithPoolState = postgres.Sql & {
  poolState(): {
    connecting: number;
    open: number;
    busy: number;
    full: number;
    reserved: number;
    closed: number;
    ended: number;
    /** Queries no connection could take. */
    queued: number;
    /** Queries sent on a connection behind the one it is answering (postgres.js pipelines up to 100). */
    pipelined: number;
  };
};

const setInstead = 'Set DATABASE_POOL_MODE=transaction and DATABASE_DIRECT_URL (README: Behind a connection pooler)';

/** The database is reachable but not set up as the server needs; the message says what to change. */
export class DatabaseSetupError extends Error {
  override name = 'DatabaseSetupError';
}

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
    directUrl = url,
    poolMode = 'session',
    poolSize = 10,
    connectTimeoutSeconds = 5,
    statementTimeoutMs = 5_000,
    lockTimeoutMs = 2_000,
  }: Extract<DatabaseTarget, { kind: 'postgres' }>,
  { onStatement }: DatabaseObserver,
): DatabaseHandle {
  const timeouts = {
    statement_timeout: statementTimeoutMs,
    lock_timeout: lockTimeoutMs,
    // A transaction whose client went away must not hold its locks for long.
    idle_in_transaction_session_timeout: statementTimeoutMs * 2,
  };
  // A live server answers every statement within statement_timeout (a result or an error), so
  // a connection silent for longer than that is lost, not busy.
  const silenceMs = statementTimeoutMs + 5_000;
  const transactionMode = poolMode === 'transaction';
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
    // A statement prepared by name lives on one server connection, which a transaction-mode
    // pooler does not keep for the next transaction. Unnamed, each statement is parsed afresh.
    prepare: !transactionMode,
    onnotice: () => {},
    connection: {
      application_name: 'frontegg-trpc-chat',
      // A pooler drops (PgBouncer: refuses, unless told to ignore) startup parameters other than
      // a few it tracks, and would not keep them for the next transaction's server connection.
      ...(!transactionMode && timeouts),
    },
  };
  const client = postgres(url, options) as PostgresWithPoolState;
  const db = drizzlePostgres(transactionMode ? everyStatementInTransaction(client, timeouts) : client, {
    schema,
    logger: statementLogger(onStatement),
  });
  return {
    db,
    kind: 'postgres',
    pool() {
      // The driver's own queues: a connection opening for a query, answering one, or held by a
      // transaction is in use; a query no connection could take, or sent behind another on a
      // busy connection, is waiting.
      const state = client.poolState();
      return { size: poolSize, inUse: state.connecting + state.busy + state.full + state.reserved, waiting: state.queued + state.pipelined };
    },
    async migrate() {
      // A session-level advisory lock needs one connection for lock, migrations and unlock: a
      // direct one, as a transaction-mode pooler would hand each statement to any server connection.
      const lockClient = postgres(directUrl, { max: 1, connect_timeout: 5, onnotice: () => {} });
      try {
        await lockClient`select pg_advisory_lock(${MIGRATION_LOCK_ID})`;
        await migratePostgres(drizzlePostgres(lockClient), { migrationsFolder });
        await lockClient`select pg_advisory_unlock(${MIGRATION_LOCK_ID})`;
      } finally {
        await lockClient.end({ timeout: 5 });
      }
    },
    ping: () => ping(db),
    async checkSettings() {
      const rows = (await db
        .execute(
          sql`select name, setting from pg_settings where name in ('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout')`,
        )
        .catch((error: unknown) => {
          // PgBouncer's answer to a connection parameter it was not told to ignore.
          const refused = /unsupported startup parameter: (\w+)/.exec(String((error as Error).cause ?? error));
          if (!refused) throw error;
          throw new DatabaseSetupError(
            `DATABASE_URL refused the connection parameter ${refused[1]}: a pooler such as PgBouncer is in between. ${setInstead}`,
          );
        })) as unknown as { name: keyof typeof timeouts; setting: string }[];
      // In the order of `timeouts`: statement_timeout is the one an operator knows.
      const lost = (Object.keys(timeouts) as (keyof typeof timeouts)[])
        .map((name) => rows.find((row) => row.name === name) ?? { name, setting: 'unknown' })
        .find(({ name, setting }) => setting !== String(timeouts[name]));
      if (!lost) return;
      throw new DatabaseSetupError(
        transactionMode
          ? `Statements run with ${lost.name} = ${lost.setting} ms, not the ${timeouts[lost.name]} ms set in their transaction: check DATABASE_URL`
          : `DATABASE_URL's connections lost the ${lost.name} sent when connecting (${lost.setting} ms, not ${timeouts[lost.name]} ms): ` +
              `a pooler such as PgBouncer is in between. ${setInstead}`,
      );
    },
    async listen(channel, onNotification, onListening) {
      const listener = postgres(directUrl, {
        max: 1,
        connect_timeout: connectTimeoutSeconds,
        fetch_types: false,
        onnotice: () => {},
        connection: { application_name: 'frontegg-trpc-chat listener' },
      });
      try {
        await listener.listen(channel, onNotification, onListening);
      } catch (error) {
        await listener.end({ timeout: 1 });
        throw error;
      }
      return { close: () => listener.end({ timeout: 1 }) };
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

/**
 * `client` as Drizzle sees it behind a transaction-mode pooler: every statement Drizzle sends
 * outside a transaction runs in one of its own, and every transaction starts by setting the
 * timeouts for itself (`SET LOCAL`), which the pooler keeps, as it keeps the server connection,
 * until the transaction ends.
 *
 * The transaction is also what makes postgres.js safe here. Without one, it would send a
 * statement on a connection still waiting for the answer to the one before (pipelining), and a
 * statement with parameters as Parse/Describe, then Bind/Execute once the parameter types are
 * known; a transaction-mode pooler may hand each part to a different server connection, whose
 * unnamed statement is some other client's ("bind message supplies 5 parameters, but prepared
 * statement "" requires 3"). In a transaction the pooler keeps one server connection, and
 * postgres.js sends nothing else on that client connection until it ends.
 *
 * The cost: `begin`, the settings and `commit` around each statement outside a transaction. With
 * parameters and nothing prepared, that is four round trips (`begin`; the settings with the
 * statement's Parse/Describe; its Bind/Execute; `commit`) where session mode takes one
 * (`npm run bench` measures it).
 */
function everyStatementInTransaction(client: postgres.Sql, timeouts: Record<string, number>): postgres.Sql {
  // Whole numbers from the configuration, not input, written into the text: with no parameters,
  // it goes out in one simple-protocol message together with the transaction's first statement,
  // without a round trip of its own. SET LOCAL rather than `select set_config(...)`, which would
  // take a snapshot and so refuse a `set transaction isolation level` after it.
  const setTimeouts = Object.entries(timeouts)
    .map(([name, value]) => `set local ${name} = ${Math.trunc(value)}`)
    .join('; ');

  function begin<T>(fn: (tx: postgres.TransactionSql) => T | Promise<T>) {
    return client.begin((tx) => {
      // Sent now, ahead of the transaction's first statement; a failure aborts the transaction, and
      // postgres.js fails the transaction with it.
      void tx.unsafe(setTimeouts).simple().execute();
      return fn(tx);
    });
  }

  /** Drizzle's one way in outside a transaction: `await client.unsafe(...)` or `.values()` on it. */
  function unsafe(query: string, parameters?: postgres.ParameterOrJSON<never>[], queryOptions?: postgres.UnsafeQueryOptions) {
    const run = (values: boolean) =>
      begin((tx) => {
        const statement = tx.unsafe(query, parameters, queryOptions);
        return values ? statement.values() : statement;
      });
    return {
      values: () => run(true),
      then: <A, B>(onfulfilled?: (rows: unknown) => A, onrejected?: (error: unknown) => B) =>
        run(false).then(onfulfilled, onrejected),
    };
  }

  return new Proxy(client, {
    apply() {
      throw new Error('Tagged statements bypass the per-statement transaction: go through Drizzle');
    },
    get(target, key, receiver) {
      if (key === 'begin') {
        return (...args: [unknown, unknown?]) => {
          if (args.length !== 1 || typeof args[0] !== 'function') {
            throw new Error('begin(options, fn) is not supported behind a transaction-mode pooler');
          }
          return begin(args[0] as (tx: postgres.TransactionSql) => unknown);
        };
      }
      if (key === 'unsafe') return unsafe;
      if (key === 'reserve' || key === 'listen' || key === 'subscribe') {
        return () => {
          throw new Error(`${String(key)}() needs a session: use DATABASE_DIRECT_URL, not a transaction-mode pooler`);
        };
      }
      return Reflect.get(target, key, receiver);
    },
  });
}

function openPglite(dataDir: string | undefined, { onStatement }: DatabaseObserver): DatabaseHandle {
  const release = dataDir ? claimPgliteDataDir(dataDir) : () => {};
  const client = new PGlite(dataDir);
  // One connection, in this process: PGlite runs one statement or transaction at a time.
  const use = countingUse(client, ['query', 'transaction'], 1);
  const db = drizzlePglite(use.client, { schema, logger: statementLogger(onStatement) });
  return {
    db,
    kind: 'pglite',
    pool: use.pool,
    // PGlite lives inside this process, which holds its data folder, so no other instance can race.
    migrate: () => migratePglite(db, { migrationsFolder }),
    ping: () => ping(db),
    // In this process: nothing in between, and no timeouts to keep.
    checkSettings: async () => {},
    async listen(channel, onNotification, onListening) {
      const unlisten = await client.listen(channel, onNotification);
      onListening();
      return { close: () => unlisten() };
    },
    async close() {
      await client.close();
      release();
    },
  };
}

/**
 * `client` as Drizzle sees it, counting the calls of `methods` (Drizzle's ways in: a statement,
 * or a transaction, which holds the connection throughout) from when they are sent until their
 * promise settles. For PGlite, which keeps no pool to ask.
 */
function countingUse<Client extends object>(client: Client, methods: readonly string[], size: number) {
  let active = 0;
  const settled = () => {
    active -= 1;
  };
  const bound = new Map<string | symbol, unknown>();
  const bind = (key: string | symbol, method: (...args: unknown[]) => unknown) => {
    if (typeof key !== 'string' || !methods.includes(key)) return method.bind(client);
    return (...args: unknown[]) => {
      const sent = method.apply(client, args) as Promise<unknown>;
      active += 1;
      // Its failure is the caller's to handle, through the promise it gets.
      sent.then(settled, settled);
      return sent;
    };
  };
  const wrapped = new Proxy(client, {
    get(target, key) {
      // Read from and bound to the client itself: PGlite's methods use private fields.
      const value: unknown = Reflect.get(target, key);
      if (typeof value !== 'function') return value;
      if (!bound.has(key)) bound.set(key, bind(key, value as (...args: unknown[]) => unknown));
      return bound.get(key);
    },
  });
  return {
    client: wrapped,
    pool: () => ({ size, inUse: Math.min(active, size), waiting: Math.max(0, active - size) }),
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

// Statements and transactions, counted by PostgreSQL itself: the `pg_stat_statements` extension
// sees every statement any client runs, so the servers under test carry no counting code and are
// not told they are measured. Its counts are per database, not per client: bench/run.ts makes
// them per server by letting one server at a time work, resetting the counts before its round
// and reading them right after.
//
// One gap in what the extension sees, and how the count fills it: a utility statement (`commit`,
// `rollback`, `savepoint`...) that the client sends as a named prepared statement is counted on
// its first run on a connection only, because pg_stat_statements zeroes the query id of the
// cached plan it runs from (seen on PostgreSQL 15: 40 transactions through postgres.js, which
// prepares `commit`, showed `begin` 40 times and `commit` once). postgres.js sends `begin`
// unprepared, so it is counted every time; and every transaction begun ends with exactly one
// `commit` or `rollback`. So the statements count takes one end per `begin` in place of the
// `commit`/`rollback` calls the extension shows. Savepoints would still be undercounted; the
// measured requests use none.
import postgres from 'postgres';

export interface StatementCounts {
  /** Statements PostgreSQL ran in the bench database, `begin` and `commit` (or `rollback`) included. */
  statements: number;
  /** Transactions begun: the `begin` statements. */
  transactions: number;
}

export interface StatementCounter {
  /** Why there are no counts (and how to have them), or undefined when there are. */
  unavailable: string | undefined;
  /**
   * Runs `round` and returns what the bench database ran meanwhile. It first waits for the
   * database to be quiet (the previous round's last requests done), so that nothing of earlier
   * rounds, warm-ups included, is counted; and again after `round`, so that this round's last
   * statements are. `counts` is undefined when the counts are unavailable.
   */
  measure<T>(round: () => Promise<T>): Promise<{ result: T; counts: StatementCounts | undefined }>;
  close(): Promise<void>;
}

const ENABLE =
  "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements' (keeping any libraries already listed), then restart PostgreSQL";

/**
 * Counts for the database at `databaseUrl` (the bench's own, new database): creates the
 * extension there, which needs PostgreSQL to load its library at start. Without a URL (the run
 * is on PGlite) or without the library, the counter reports why and measures nothing.
 */
export async function openStatementCounter(databaseUrl: string | undefined): Promise<StatementCounter> {
  if (!databaseUrl) {
    return unavailable(
      'the run is on embedded PGlite and they are counted by PostgreSQL (pg_stat_statements): set DATABASE_URL to a ' +
        `PostgreSQL server that loads it; to load it, ${ENABLE}`,
    );
  }
  // Every statement the bench sends on this connection names pg_stat_statements, which is how
  // the count leaves them out. No type lookup on connecting: it would be a statement of its own.
  const sql = postgres(databaseUrl, { max: 1, fetch_types: false, onnotice: () => {} });
  // Resets this database's counts only: other databases on the server keep theirs.
  const reset = async () => {
    await sql`select pg_stat_statements_reset(0, oid, 0) from pg_database where datname = current_database()`;
  };
  try {
    await sql`create extension if not exists pg_stat_statements`;
    await reset();
  } catch (error) {
    await sql.end({ timeout: 1 });
    return unavailable(`pg_stat_statements is not usable on this PostgreSQL (${(error as Error).message}); to enable it, ${ENABLE}`);
  }
  // Transactions are counted from their `begin`, a utility statement the extension skips without it.
  const [tracking] = await sql<{ on: boolean }[]>`select current_setting('pg_stat_statements.track_utility')::boolean as on`;
  if (!tracking?.on) {
    await sql.end({ timeout: 1 });
    return unavailable('pg_stat_statements.track_utility is off, so begin and commit are not counted: set it on (the default)');
  }

  const read = async (): Promise<StatementCounts> => {
    const [row] = await sql<{ others: string; begins: string }[]>`
      select coalesce(sum(calls) filter (where not begins and not ends), 0) as others,
             coalesce(sum(calls) filter (where begins), 0) as begins
        from (select s.calls,
                     s.query ~* '^\\s*(begin|start\\s+transaction)\\y' as begins,
                     s.query ~* '^\\s*(commit|rollback|end|abort)(\\s+(work|transaction))?\\s*;?\\s*$' as ends
                from pg_stat_statements s
                join pg_database d on d.oid = s.dbid
               where d.datname = current_database()
                 and s.query not ilike '%pg_stat_statements%') as counted`;
    const begins = Number(row!.begins);
    // Each transaction: its `begin`, its other statements, and one `commit` or `rollback`.
    return { statements: Number(row!.others) + 2 * begins, transactions: begins };
  };
  /** Until the count stops moving: no statement finished in the last 100 ms. */
  const quiet = async () => {
    let last = await read();
    for (let attempt = 0; attempt < 50; attempt += 1) {
      await sleep(100);
      const now = await read();
      if (now.statements === last.statements) return now;
      last = now;
    }
    throw new Error('the bench database never went quiet: is something else using it?');
  };

  return {
    unavailable: undefined,
    async measure(round) {
      await quiet();
      await reset();
      const result = await round();
      const counts = await quiet();
      return { result, counts };
    },
    close: () => sql.end({ timeout: 1 }),
  };
}

function unavailable(reason: string): StatementCounter {
  return {
    unavailable: reason,
    async measure(round) {
      return { result: await round(), counts: undefined };
    },
    async close() {},
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

import { type SQL, getTableColumns, getTableName, sql } from 'drizzle-orm';
import type { PgTable } from 'drizzle-orm/pg-core';
import type { Database } from './database.js';

/** True only for a row this statement inserted: an updated row carries the updating transaction in xmax. */
export const createdNow = sql<boolean>`(xmax = 0)`;

export interface ReadOrInsert {
  /** Which existing row to return. */
  where: SQL;
  /** The insert's column list and the values for them, used only when no row matches `where`. */
  columns: SQL;
  values: SQL;
  /**
   * An `on conflict (…) do update set …` that changes nothing: when concurrent statements race,
   * it makes the losers wait for the winner and return its row, where DO NOTHING would return none.
   */
  onConflict: SQL;
}

/**
 * One statement that returns the row of `table` matching `where`, inserting it when there is none,
 * with `created` telling which happened. An existing row is only read: no lock and no write, so
 * callers that find it never queue behind each other.
 */
export async function readOrInsert<Table extends PgTable>(db: Database, table: Table, parts: ReadOrInsert) {
  // Prepared: see `Database`.
  const [found] = await readOrInsertQuery(db, table, parts).prepare(`read_or_insert_${getTableName(table)}`).execute();
  if (!found) throw new Error(`reading or inserting into ${getTableName(table)} returned no row`);
  return found;
}

/**
 * The statement of `readOrInsert`, not yet run: to `.prepare()` it once and run it many times
 * with `sql.placeholder`s in `where` and `values`. It returns one row.
 */
export function readOrInsertQuery<Table extends PgTable>(
  db: Database,
  table: Table,
  { where, columns, values, onConflict }: ReadOrInsert,
) {
  const returned = { ...getTableColumns(table), created: createdNow.as('created') };
  const existing = db.$with('existing').as(
    db
      .select({ ...getTableColumns(table), created: sql<boolean>`false`.as('created') })
      .from(table as PgTable)
      .where(where),
  );
  const inserted = db.$with('inserted', returned).as(
    sql`insert into ${table} (${columns})
      select ${values}
      where not exists (select from ${existing})
      ${onConflict}
      returning *, ${createdNow} as created`,
  );
  // Data-modifying CTEs must sit at the top level, so the union is a CTE of its own.
  const row = db.$with('row', returned).as(sql`select * from ${existing} union all select * from ${inserted}`);
  // Drizzle cannot resolve a CTE's row type for a generic table; it is the table's row plus `created`.
  return db.with(existing, inserted, row).select().from(row as never) as unknown as ReadOrInsertQuery<
    Table['$inferSelect'] & { created: boolean }
  >;
}

/** What `readOrInsertQuery` gives: awaited, or prepared and executed. */
export interface ReadOrInsertQuery<Row> extends PromiseLike<Row[]> {
  prepare(name: string): { execute(placeholders?: Record<string, unknown>): Promise<Row[]> };
}

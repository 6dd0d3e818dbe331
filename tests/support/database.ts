import { randomBytes } from 'node:crypto';
import { and, eq, inArray, sql } from 'drizzle-orm';
import { inject } from 'vitest';
import { type Database, type DatabaseHandle, type DatabaseObserver, openDatabase } from '../../db/database.js';
import { deleteEventsRecordedBefore } from '../../db/chat-events.js';
import { chatEvents, organizationMembers } from '../../db/schema.js';
import { createDatabase } from '../../db/throwaway-database.js';

/** This run's PostgreSQL database when DATABASE_URL is set, else a fresh in-memory PGlite. */
export async function openTestDatabase(observer: DatabaseObserver = {}): Promise<DatabaseHandle> {
  const url = inject('databaseUrl');
  const database = openDatabase(url ? { kind: 'postgres', url } : { kind: 'pglite' }, observer);
  await database.migrate();
  return database;
}

/**
 * An empty PostgreSQL database of its own on this run's server, for tests of what happens on an
 * empty database (migrations, first starts). PostgreSQL only: undefined on PGlite.
 */
export async function createEmptyDatabase(prefix: string) {
  const runUrl = inject('databaseUrl');
  return runUrl ? createDatabase(runUrl, prefix) : undefined;
}

/**
 * A migrated database of the caller's own, for tests that change the schema itself: a new database
 * on this run's PostgreSQL server, or a new in-memory PGlite. `drop` closes and removes it.
 */
export async function openPrivateDatabase(prefix: string): Promise<DatabaseHandle & { drop(): Promise<void> }> {
  const empty = await createEmptyDatabase(prefix);
  const database = openDatabase(empty ? { kind: 'postgres', url: empty.url } : { kind: 'pglite' });
  await database.migrate();
  return {
    ...database,
    async drop() {
      await database.close();
      await empty?.drop();
    },
  };
}

/**
 * Runs `fn` while PostgreSQL itself refuses inserts into `table` whose `column` equals `value`:
 * a real database failure at a chosen statement, with `message` as the driver's error text.
 */
export async function whileInsertsFail<T>(
  db: Database,
  failure: { table: string; column: string; value: string; message: string },
  fn: () => Promise<T>,
): Promise<T> {
  const name = `refuse_${failure.table}_${randomBytes(4).toString('hex')}`;
  const literal = (text: string) => `'${text.replaceAll("'", "''")}'`;
  await db.execute(
    sql.raw(`create function ${name}() returns trigger language plpgsql as $$
      begin
        if new.${failure.column} = ${literal(failure.value)} then raise exception ${literal(failure.message)}; end if;
        return new;
      end $$`),
  );
  await db.execute(sql.raw(`create trigger ${name} before insert on ${failure.table} for each row execute function ${name}()`));
  try {
    return await fn();
  } finally {
    await db.execute(sql.raw(`drop trigger ${name} on ${failure.table}`));
    await db.execute(sql.raw(`drop function ${name}()`));
  }
}

/** What an operator does to suspend someone in one organization: `is_active = false` on the membership. */
export async function deactivateMembership(db: Database, { userId, organizationId }: { userId: string; organizationId: string }) {
  await db
    .update(organizationMembers)
    .set({ isActive: false })
    .where(and(eq(organizationMembers.userId, userId), eq(organizationMembers.organizationId, organizationId)));
}

/**
 * Makes a member's chat events (those numbered `seqs`, else all) older than any retention and
 * deletes them as the server's clean-up does. In one transaction, whose row locks keep the
 * clean-up of running instances (other test files) off them meanwhile.
 */
export async function expireChatEvents(
  db: Database,
  { userId, organizationId }: { userId: string; organizationId: string },
  seqs?: number[],
) {
  const dayAgo = new Date(Date.now() - 86_400_000);
  await db.transaction(async (tx) => {
    await tx
      .update(chatEvents)
      .set({ createdAt: new Date(dayAgo.getTime() - 60_000) })
      .where(
        and(
          eq(chatEvents.userId, userId),
          eq(chatEvents.organizationId, organizationId),
          seqs ? inArray(chatEvents.seq, seqs) : undefined,
        ),
      );
    await deleteEventsRecordedBefore(tx, dayAgo);
  });
}

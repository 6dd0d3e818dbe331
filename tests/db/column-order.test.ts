import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { expect, it } from 'vitest';
import { createActiveSession, getOrCreateActiveSession, getSessionById, renameSessionById } from '../../db/chat.js';
import type { Database } from '../../db/database.js';
import { provisionIdentity } from '../../db/provisioning.js';
import { openPrivateDatabase } from '../support/database.js';

/**
 * What a migration does when it adds a column: it goes at the end of the table, wherever
 * db/schema.ts declares it (a `pinnedAt` before `createdAt`, say). Moving a declared column to the
 * end too makes the table's physical order differ from the declaration's.
 */
async function reorderColumns(db: Database, table: string, move: { column: string; definition: string }) {
  await db.execute(sql.raw(`alter table ${table} add column pinned_at timestamptz`));
  await db.execute(sql.raw(`alter table ${table} drop column ${move.column}`));
  await db.execute(sql.raw(`alter table ${table} add column ${move.column} ${move.definition}`));
}

it('reads and writes by column name, whatever the physical order of a table’s columns', async () => {
  const database = await openPrivateDatabase('columns');
  try {
    const { db } = database;
    await reorderColumns(db, 'chat_sessions', { column: 'title', definition: "text not null default 'New Chat'" });
    await reorderColumns(db, 'organizations', { column: 'name', definition: "text not null default ''" });
    await reorderColumns(db, 'users', { column: 'email', definition: 'text' });
    await reorderColumns(db, 'organization_members', { column: 'is_active', definition: 'boolean not null default true' });
    const owner = { userId: randomUUID(), organizationId: randomUUID() };
    const claims = { userId: owner.userId, tenantId: owner.organizationId, email: 'ada@example.com', name: 'Ada', roles: ['Admin'] };

    const first = await provisionIdentity(db, claims);
    expect(first.created).toEqual({ organization: true, user: true, membership: true });
    expect(first.organization).toMatchObject({ id: owner.organizationId, name: 'Ada', slug: expect.any(String) });
    expect(first.user).toMatchObject({ id: owner.userId, email: 'ada@example.com', name: 'Ada', emailVerified: false });
    expect(first.membership).toMatchObject({ userId: owner.userId, organizationId: owner.organizationId, role: 'admin', isActive: true });
    const again = await provisionIdentity(db, claims);
    expect(again.created).toEqual({ organization: false, user: false, membership: false });
    expect(again.organization).toEqual(first.organization);
    expect(again.membership).toEqual(first.membership);

    const { session: created, created: wasCreated } = await getOrCreateActiveSession(db, owner);
    expect(wasCreated).toBe(true);
    expect(created).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      title: 'New Chat',
      isActive: true,
      createdAt: expect.any(Date),
      updatedAt: expect.any(Date),
    });
    expect(created.updatedAt).toEqual(created.createdAt);

    expect(await getOrCreateActiveSession(db, owner)).toEqual({ session: created, created: false });
    expect(await getSessionById(db, { ...owner, id: created.id })).toEqual(created);
    expect(await renameSessionById(db, { ...owner, id: created.id, title: 'Renamed' })).toMatchObject({
      id: created.id,
      title: 'Renamed',
      isActive: true,
    });
    const second = await createActiveSession(db, { ...owner, title: 'Second' });
    expect(second).toMatchObject({ title: 'Second', isActive: true });
    expect(await getOrCreateActiveSession(db, owner)).toEqual({ session: second, created: false });
  } finally {
    await database.drop();
  }
});

import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { expect, it } from 'vitest';
import { createActiveSession, getOrCreateActiveSession, getSessionById, renameSessionById } from '../../db/chat.js';
import { provisionIdentity } from '../../db/provisioning.js';
import { openPrivateDatabase } from '../support/database.js';

it('reads and writes sessions by column name, whatever the physical order of the table’s columns', async () => {
  const database = await openPrivateDatabase('columns');
  try {
    const { db } = database;
    // A migration adds a column at the end of the table, wherever db/schema.ts declares it (a
    // `pinnedAt` before `createdAt`, say). Moving `title` to the end too, the physical order is
    // id, user_id, organization_id, is_active, created_at, updated_at, pinned_at, title.
    await db.execute(sql`alter table chat_sessions add column pinned_at timestamptz`);
    await db.execute(sql`alter table chat_sessions drop column title`);
    await db.execute(sql`alter table chat_sessions add column title text not null default 'New Chat'`);
    const owner = { userId: randomUUID(), organizationId: randomUUID() };
    await provisionIdentity(db, { userId: owner.userId, tenantId: owner.organizationId, roles: ['Admin'] });

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

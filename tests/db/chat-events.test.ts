import { randomUUID } from 'node:crypto';
import { and, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deleteEventsRecordedBefore, getEventStreamState, getEventsAfter } from '../../db/chat-events.js';
import { addMessageToSession, getOrCreateActiveSession } from '../../db/chat.js';
import type { DatabaseHandle } from '../../db/database.js';
import { provisionIdentity } from '../../db/provisioning.js';
import { chatEvents } from '../../db/schema.js';
import { openTestDatabase } from '../support/database.js';

let database: DatabaseHandle;
beforeAll(async () => {
  database = await openTestDatabase();
});
afterAll(() => database.close());

/** A provisioned member with an active session and `count` messages of `size` characters each. */
async function memberWithMessages(count: number, size: number) {
  const claims = { userId: randomUUID(), tenantId: randomUUID() };
  await provisionIdentity(database.db, claims);
  const owner = { userId: claims.userId, organizationId: claims.tenantId };
  const { session } = await getOrCreateActiveSession(database.db, owner);
  for (let index = 0; index < count; index++) {
    const content = `${index} ${'x'.repeat(size)}`;
    await addMessageToSession(database.db, { ...owner, sessionId: session.id, role: 'user', content, titleIfFirst: `message ${index}` });
  }
  return owner;
}

const ownerEvents = (owner: { userId: string; organizationId: string }) =>
  and(eq(chatEvents.userId, owner.userId), eq(chatEvents.organizationId, owner.organizationId));

describe('the chat event log', () => {
  it('numbers a member’s events 1, 2, 3, … and keeps the newest number on the membership', async () => {
    const owner = await memberWithMessages(3, 10);
    // session.created, then a message.created and a session.updated for each message.
    const events = await getEventsAfter(database.db, { ...owner, afterSeq: 0, limit: 50, maxBytes: 1_000_000 });
    expect(events.map((logged) => logged.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(events.map((logged) => logged.event?.type)).toEqual([
      'session.created',
      ...Array.from({ length: 3 }, () => ['message.created', 'session.updated']).flat(),
    ]);
    expect(await getEventStreamState(database.db, owner)).toEqual({ lastEventSeq: 7, isActive: true });
  });

  it('reads a page up to a budget of message text, and always at least one event', async () => {
    const owner = await memberWithMessages(4, 1_000);
    // Events 2, 4, 6 and 8 are the messages, of about 1 KB each.
    const page = await getEventsAfter(database.db, { ...owner, afterSeq: 1, limit: 50, maxBytes: 2_100 });
    expect(page.map((logged) => logged.seq)).toEqual([2, 3, 4, 5]);
    const one = await getEventsAfter(database.db, { ...owner, afterSeq: 1, limit: 50, maxBytes: 10 });
    expect(one.map((logged) => logged.seq)).toEqual([2]);
    expect(one[0]?.event).toMatchObject({ type: 'message.created', message: { content: `0 ${'x'.repeat(1_000)}` } });
  });

  it('deletes events past the retention in batches, and only those', async () => {
    const old = await memberWithMessages(3, 10);
    const recent = await memberWithMessages(1, 10);
    const dayAgo = new Date(Date.now() - 86_400_000);
    // In one transaction, whose row locks keep the instances of other test files (which prune
    // what is older than their retention) off these rows.
    const deleted = await database.db.transaction(async (tx) => {
      await tx.update(chatEvents).set({ createdAt: new Date(dayAgo.getTime() - 60_000) }).where(ownerEvents(old));
      return deleteEventsRecordedBefore(tx, dayAgo, 2);
    });
    expect(deleted).toBe(7);
    expect(await database.db.select().from(chatEvents).where(ownerEvents(old))).toEqual([]);
    expect((await database.db.select().from(chatEvents).where(ownerEvents(recent))).map((row) => row.seq)).toEqual([1, 2, 3]);
    // The numbering goes on after the deleted ones: an id is never given twice.
    expect((await getEventStreamState(database.db, old))?.lastEventSeq).toBe(7);
  });
});

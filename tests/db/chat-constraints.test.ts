import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getOrCreateActiveSession } from '../../db/chat.js';
import type { DatabaseHandle } from '../../db/database.js';
import { provisionIdentity } from '../../db/provisioning.js';
import { chatMessages, chatSessions } from '../../db/schema.js';
import { openTestDatabase } from '../support/database.js';

let database: DatabaseHandle;
beforeAll(async () => {
  database = await openTestDatabase();
});
afterAll(() => database.close());

async function member() {
  const claims = { userId: randomUUID(), tenantId: randomUUID() };
  await provisionIdentity(database.db, claims);
  return { userId: claims.userId, organizationId: claims.tenantId };
}

/** The database's own refusal, whatever the code above it does. */
async function expectRefused(write: Promise<unknown>, constraint: RegExp) {
  const error = await write.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Error);
  const texts: string[] = [];
  for (let current: unknown = error; current instanceof Error; current = current.cause) texts.push(current.message);
  expect(texts.join('\n')).toMatch(constraint);
}

describe('the chat tables refuse, by themselves', () => {
  it('a second active session of one user in one organization', async () => {
    const owner = await member();
    await database.db.insert(chatSessions).values({ ...owner, isActive: true });
    await expectRefused(database.db.insert(chatSessions).values({ ...owner, isActive: true }), /chat_sessions_one_active_idx/);
    // Inactive ones are not limited.
    await database.db.insert(chatSessions).values([{ ...owner, isActive: false }, { ...owner, isActive: false }]);
  });

  it('a session of someone who is not a member of the organization', async () => {
    const owner = await member();
    const stranger = await member();
    await expectRefused(
      database.db.insert(chatSessions).values({ userId: owner.userId, organizationId: stranger.organizationId }),
      /chat_sessions_membership_fk/,
    );
  });

  it('an empty or over-long title, and a message role outside user, assistant and system', async () => {
    const owner = await member();
    await expectRefused(database.db.insert(chatSessions).values({ ...owner, title: '' }), /chat_sessions_title_length/);
    await expectRefused(
      database.db.insert(chatSessions).values({ ...owner, title: 't'.repeat(201) }),
      /chat_sessions_title_length/,
    );
    const { session } = await getOrCreateActiveSession(database.db, owner);
    await expectRefused(
      database.db.insert(chatMessages).values({ sessionId: session.id, role: 'robot' as 'user', content: 'x' }),
      /chat_messages_role_check/,
    );
  });

  it('a message of a session that does not exist', async () => {
    await expectRefused(
      database.db.insert(chatMessages).values({ sessionId: randomUUID(), role: 'user', content: 'x' }),
      /chat_messages_session_id_chat_sessions_id_fk/,
    );
  });
});

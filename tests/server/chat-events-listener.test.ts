import { randomUUID } from 'node:crypto';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type ChatEvent, type MembershipChange, notifyMembershipChanged } from '../../db/chat-events.js';
import { addMessageToSession, getOrCreateActiveSession } from '../../db/chat.js';
import { type DatabaseHandle, openDatabase } from '../../db/database.js';
import { provisionIdentity } from '../../db/provisioning.js';
import { organizationMembers } from '../../db/schema.js';
import { type ChatEventHub, createChatEventHub } from '../../server/chat-events.js';
import { createLogger } from '../../server/logger.js';
import { type ProxyState, startTcpProxy } from '../support/tcp-proxy.js';

const databaseUrl = inject('databaseUrl');
const HEARTBEAT_MS = 200;

// An instance's LISTEN connection to PostgreSQL, through a proxy that can cut or stall it.
describe.skipIf(!databaseUrl)('the LISTEN connection behind chat.events', () => {
  let proxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let database: DatabaseHandle;
  let hub: ChatEventHub;
  const logs: { msg?: string }[] = [];
  const membershipChanges: MembershipChange[] = [];

  beforeAll(async () => {
    const url = new URL(databaseUrl!);
    proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
    // Statements go straight to PostgreSQL; only the listener goes through the proxy.
    database = openDatabase({ kind: 'postgres', url: databaseUrl!, directUrl: proxy.urlFor(databaseUrl!), connectTimeoutSeconds: 1 });
    await database.migrate();
    hub = createChatEventHub({
      db: database.db,
      listen: database.listen,
      log: createLogger({ level: 'info', destination: { write: (line: string) => void logs.push(JSON.parse(line)) } }),
      retentionMs: 3_600_000,
      subscriptionsPerPerson: 5,
      subscriptionsPerInstance: 100,
      membershipCheckMs: 60_000,
      listenerHeartbeatMs: HEARTBEAT_MS,
      onMembershipChanged: (change) => void membershipChanges.push(change),
    });
    await hub.start();
  });
  afterAll(async () => {
    await hub?.close();
    await database?.close();
    await proxy?.close();
  });

  it.each<[ProxyState, string]>([
    ['cut', 'refused, as while PostgreSQL restarts'],
    ['stall', 'silent, as when a network path dies without a word'],
  ])('is replaced when %s (%s), and what was recorded meanwhile is delivered', async (state) => {
    const { organization, user } = await provisionIdentity(database.db, { userId: randomUUID(), tenantId: randomUUID() });
    const owner = { userId: user.id, organizationId: organization.id };
    const { session } = await getOrCreateActiveSession(database.db, owner);
    const controller = new AbortController();
    const events = (
      await hub.subscribe({ owner, lastEventId: null, expiresAt: new Date(Date.now() + 60_000), signal: controller.signal })
    )[Symbol.asyncIterator]();
    const next = () => events.next().then(({ value }) => value?.[1] as ChatEvent);

    const send = (content: string) => addMessageToSession(database.db, { ...owner, sessionId: session.id, role: 'user', content, titleIfFirst: content });
    const live = next();
    await send('before');
    expect(await live).toMatchObject({ type: 'message.created', message: { content: 'before' } });
    await next();

    const warnings = logs.length;
    proxy.setState(state);
    const during = next();
    await send('during');
    // Long enough for the heartbeat to notice the silence and fail to reconnect at least once.
    await new Promise((resolve) => setTimeout(resolve, 10 * HEARTBEAT_MS));
    proxy.setState('up');
    expect(await during).toMatchObject({ type: 'message.created', message: { content: 'during' } });
    expect(logs.slice(warnings).map((line) => line.msg)).toContain('Chat events listener heard nothing; reconnecting it');

    // And it hears again.
    await next();
    const after = next();
    await send('after');
    expect(await after).toMatchObject({ type: 'message.created', message: { content: 'after' } });
    controller.abort();
    await events.return?.(undefined);
  }, 30_000);

  it('forgets every remembered membership when it listens again, and ends the stream of a member removed while it could not hear', async () => {
    const { organization, user } = await provisionIdentity(database.db, { userId: randomUUID(), tenantId: randomUUID() });
    const owner = { userId: user.id, organizationId: organization.id };
    const controller = new AbortController();
    const events = (
      await hub.subscribe({ owner, lastEventId: null, expiresAt: new Date(Date.now() + 60_000), signal: controller.signal })
    )[Symbol.asyncIterator]();
    const ended = events.next().then(
      () => 'no error',
      (error: { code?: string }) => error.code,
    );

    proxy.setState('cut');
    // Removed, as a webhook does it on another instance: the notification is lost to this one.
    await database.db.transaction(async (tx) => {
      await tx.update(organizationMembers).set({ fronteggRemovedAt: new Date() }).where(eq(organizationMembers.userId, user.id));
      await notifyMembershipChanged(tx, owner);
    });
    await new Promise((resolve) => setTimeout(resolve, 5 * HEARTBEAT_MS));
    const before = membershipChanges.length;
    proxy.setState('up');

    expect(await ended).toBe('FORBIDDEN');
    expect(membershipChanges.slice(before)).toContainEqual({});
    controller.abort();
  }, 30_000);
});

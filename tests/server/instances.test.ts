import { randomUUID } from 'node:crypto';
import { count, eq } from 'drizzle-orm';
import type { TRPCClientError } from '@trpc/client';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { type AppRouter, createApiClient } from '../../client/index.js';
import { chatSessions, organizationMembers, organizations, users } from '../../db/schema.js';
import { clientError } from '../support/errors.js';
import { watchEvents } from '../support/events.js';
import { WEBHOOK_SECRET, deliverWebhook, fronteggUser, webhookBody } from '../support/frontegg-webhooks.js';
import { type Instances, startInstances } from '../support/instances.js';

const INSTANCES = 3;

// Several instances share one PostgreSQL; PGlite belongs to a single process.
describe.skipIf(!inject('databaseUrl'))(`${INSTANCES} instances started at once on one empty database`, () => {
  let instances: Instances;
  let servers: Instances['servers'];
  let database: Instances['database'];

  beforeAll(async () => {
    instances = await startInstances('instances', INSTANCES, { fronteggWebhookSecret: WEBHOOK_SECRET });
    ({ servers, database } = instances);
  });
  afterAll(() => instances?.close());

  /** A typed client of the `index`-th instance, round robin, as a load balancer would spread them. */
  function clientOf(index: number, token: string) {
    const server = servers[index % servers.length]!;
    return createApiClient({ url: `${server.url}/trpc`, getToken: () => token });
  }

  it('all start and serve', async () => {
    const token = await instances.idp.mintToken();
    const answers = await Promise.all(servers.map((_, index) => clientOf(index, token).me.query()));
    expect(new Set(answers.map((me) => me.user.id)).size).toBe(1);
  });

  it('give concurrent first logins spread across them one organization, user, membership and active session', async () => {
    const tenantId = randomUUID();
    const people = Array.from({ length: 4 }, () => randomUUID());
    const tokens = await Promise.all(people.map((sub) => instances.idp.mintToken({ claims: { sub, tenantId } })));
    // Every person's first requests hit every instance at once.
    const calls = Array.from({ length: 36 }, (_, index) =>
      clientOf(index, tokens[index % tokens.length]!).chat.getActiveSession.query(),
    );
    const sessions = await Promise.all(calls);

    // Call i was person i % 4's: each person got one session, whichever instance answered.
    const sessionIdsOf = people.map((_, person) => new Set(sessions.filter((_, i) => i % people.length === person).map((s) => s.id)));
    expect(sessionIdsOf.map((ids) => ids.size)).toEqual(people.map(() => 1));
    expect(new Set(sessionIdsOf.flatMap((ids) => [...ids])).size).toBe(people.length);

    const { db } = database;
    const rows = async (
      table: typeof organizations | typeof organizationMembers | typeof chatSessions | typeof users,
      where: ReturnType<typeof eq>,
    ) =>
      (await db.select({ n: count() }).from(table).where(where))[0]?.n;
    expect(await rows(organizations, eq(organizations.id, tenantId))).toBe(1);
    expect(await rows(organizationMembers, eq(organizationMembers.organizationId, tenantId))).toBe(people.length);
    expect(await rows(chatSessions, eq(chatSessions.organizationId, tenantId))).toBe(people.length);
    for (const sub of people) {
      expect(await rows(users, eq(users.id, sub))).toBe(1);
    }
  });

  it('share what must be shared: a cursor issued by one instance pages on another', async () => {
    const token = await instances.idp.mintToken();
    await clientOf(0, token).chat.createSession.mutate({ title: 'one' });
    await clientOf(1, token).chat.createSession.mutate({ title: 'two' });
    const first = await clientOf(0, token).chat.listSessions.query({ limit: 1 });
    const second = await clientOf(2, token).chat.listSessions.query({ limit: 1, cursor: first.nextCursor });
    expect([first.items[0]?.title, second.items[0]?.title]).toEqual(['two', 'one']);
  });

  it('refuse, within a second, a person whose removal from the tenant one of them acknowledged, and end their streams', async () => {
    const user = fronteggUser();
    const token = await instances.idp.mintToken({ claims: { sub: user.id, tenantId: user.tenantId } });
    // Known to every instance, with a stream open on each.
    await Promise.all(servers.map((_, index) => clientOf(index, token).me.query()));
    const streams = servers.map((_, index) => watchEvents(clientOf(index, token)));
    await Promise.all(streams.map((stream) => stream.connected()));

    expect(await deliverWebhook(servers[0]!.url, webhookBody('frontegg.user.removedFromTenant', user))).toMatchObject({ status: 200 });
    for (const [index, stream] of streams.entries()) {
      await vi.waitFor(async () => expect((await clientError(clientOf(index, token).me.query())).data?.code).toBe('FORBIDDEN'), {
        timeout: 1_000,
        interval: 10,
      });
      await stream.until(() => expect(stream.errors).not.toHaveLength(0), 1_000);
      expect((stream.errors[0] as TRPCClientError<AppRouter>).data?.code).toBe('FORBIDDEN');
      stream.close();
    }
  });
});

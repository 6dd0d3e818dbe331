import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, expectTypeOf, it } from 'vitest';
import { type RouterInputs, type RouterOutputs, createApiClient } from '../../client/index.js';
import { clientError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

let app: TestApp;
let http: Awaited<ReturnType<typeof startHttpServer>>;
beforeAll(async () => {
  app = await startTestApp();
  http = await startHttpServer(app);
});
afterAll(async () => {
  await http.close();
  await app.close();
});


/** A typed client that counts the HTTP requests it sends. */
function countingClient(token: string) {
  const counter = { requests: 0 };
  const client = createApiClient({
    url: `${http.url}/trpc`,
    getToken: () => token,
    fetch: (input, init) => {
      counter.requests += 1;
      return fetch(input, init);
    },
  });
  return { client, counter };
}

describe('the chat router through the typed client over HTTP', () => {
  it('runs a whole conversation: active session, messages, paging, rename, a second session, delete', async () => {
    const token = await app.idp.mintToken();
    const chat = http.clientFor(token).chat;

    const active = await chat.getActiveSession.query();
    expect(active).toMatchObject({ title: 'New Chat', isActive: true });
    expect(active.createdAt).toBeInstanceOf(Date);

    for (const content of ['What is tRPC?', 'And Drizzle?', 'How do they fit together?']) {
      await chat.sendMessage.mutate({ sessionId: active.id, content });
    }
    const latest = await chat.listMessages.query({ sessionId: active.id, limit: 2 });
    expect(latest.items.map((m) => m.content)).toEqual(['And Drizzle?', 'How do they fit together?']);
    expect(latest.items[0]?.createdAt).toBeInstanceOf(Date);
    const start = await chat.listMessages.query({ sessionId: active.id, limit: 2, cursor: latest.nextCursor });
    expect(start).toMatchObject({ items: [{ content: 'What is tRPC?', role: 'user' }], nextCursor: null });

    expect(await chat.getSession.query({ sessionId: active.id })).toMatchObject({ title: 'What is tRPC?' });
    expect(await chat.renameSession.mutate({ sessionId: active.id, title: 'Stack questions' })).toMatchObject({
      title: 'Stack questions',
    });

    const second = await chat.createSession.mutate({ title: 'Second' });
    expect(await chat.getActiveSession.query()).toEqual(second);
    expect((await chat.listSessions.query()).items.map((s) => [s.title, s.isActive])).toEqual([
      ['Second', true],
      ['Stack questions', false],
    ]);
    expect(await chat.setActiveSession.mutate({ sessionId: active.id })).toMatchObject({ id: active.id, isActive: true });

    expect(await chat.deleteSession.mutate({ sessionId: active.id })).toEqual({ sessionId: active.id });
    const error = await clientError(chat.listMessages.query({ sessionId: active.id }));
    expect(error.data).toMatchObject({ code: 'NOT_FOUND', httpStatus: 404 });
    const next = await chat.getActiveSession.query();
    expect(next.id).not.toBe(active.id);
    expect(next.id).not.toBe(second.id);
  });

  it('sends calls made together as one batched request', async () => {
    const { client, counter } = countingClient(await app.idp.mintToken());
    const session = await client.chat.getActiveSession.query();
    counter.requests = 0;

    const [sessions, one, two] = await Promise.all([
      client.chat.listSessions.query(),
      client.chat.sendMessage.mutate({ sessionId: session.id, content: 'first' }),
      client.chat.sendMessage.mutate({ sessionId: session.id, content: 'second' }),
    ]);
    // Queries and mutations batch separately (GET and POST): two requests for three calls.
    expect(counter.requests).toBe(2);
    expect(sessions.items.map((s) => s.id)).toEqual([session.id]);
    expect([one.message.content, two.message.content]).toEqual(['first', 'second']);

    counter.requests = 0;
    const [messages, again, missing] = await Promise.allSettled([
      client.chat.listMessages.query({ sessionId: session.id }),
      client.chat.getSession.query({ sessionId: session.id }),
      client.chat.getSession.query({ sessionId: randomUUID() }),
    ]);
    expect(counter.requests).toBe(1);
    // One refused call does not fail the others of its batch.
    // The server runs the calls of a batch concurrently, so the two messages may be stored in either order.
    expect(messages.status === 'fulfilled' && messages.value.items.map((m) => m.content).sort()).toEqual(['first', 'second']);
    expect(again).toMatchObject({ status: 'fulfilled', value: { id: session.id } });
    expect(missing).toMatchObject({ status: 'rejected', reason: { data: { code: 'NOT_FOUND' } } });
  });

  it('gives 30 concurrent first requests of a new user, each its own HTTP request, one session', async () => {
    const token = await app.idp.mintToken();
    const sessions = await Promise.all(Array.from({ length: 30 }, () => http.clientFor(token).chat.getActiveSession.query()));
    expect(new Set(sessions.map((s) => s.id)).size).toBe(1);
    expect((await http.clientFor(token).chat.listSessions.query()).items).toHaveLength(1);
  });

  it('answers 404 for another person’s session, 400 with details for bad input, 401 without a token', async () => {
    const tenantId = randomUUID();
    const owner = http.clientFor(await app.idp.mintToken({ claims: { tenantId } }));
    const colleague = http.clientFor(await app.idp.mintToken({ claims: { tenantId } }));
    const session = await owner.chat.getActiveSession.query();

    const notFound = await clientError(colleague.chat.sendMessage.mutate({ sessionId: session.id, content: 'hi' }));
    expect(notFound.data).toMatchObject({ code: 'NOT_FOUND', httpStatus: 404 });
    expect(notFound.message).toBe('Chat session not found');

    const invalid = await clientError(owner.chat.sendMessage.mutate({ sessionId: session.id, content: '' }));
    expect(invalid.data).toMatchObject({ code: 'BAD_REQUEST', httpStatus: 400 });
    expect(invalid.data?.validation?.fieldErrors).toHaveProperty('content');

    const badId = await clientError(owner.chat.getSession.query({ sessionId: 'nope' }));
    expect(badId.data?.validation?.fieldErrors).toHaveProperty('sessionId');

    const badCursor = await clientError(owner.chat.listSessions.query({ cursor: 'forged' }));
    expect(badCursor.data).toMatchObject({ code: 'BAD_REQUEST', httpStatus: 400 });
    expect(badCursor.message).toBe('Invalid cursor');

    const signedOut = await clientError(http.clientFor(undefined).chat.getActiveSession.query());
    expect(signedOut.data).toMatchObject({ code: 'UNAUTHORIZED', httpStatus: 401 });
  });
});

describe('the typed client’s inference', () => {
  it('infers chat inputs and outputs from AppRouter', async () => {
    type Session = RouterOutputs['chat']['getActiveSession'];
    expectTypeOf<Session>().toEqualTypeOf<{
      id: string;
      title: string;
      isActive: boolean;
      createdAt: Date;
      updatedAt: Date;
    }>();
    type Message = {
      id: string;
      sessionId: string;
      role: 'user' | 'assistant' | 'system';
      content: string;
      status: 'streaming' | 'complete' | 'failed' | 'stopped';
      createdAt: Date;
    };
    expectTypeOf<RouterOutputs['chat']['sendMessage']>().toEqualTypeOf<{ message: Message; reply: Message | null }>();
    expectTypeOf<RouterOutputs['chat']['stopReply']>().toEqualTypeOf<Message | null>();
    expectTypeOf<RouterOutputs['chat']['listSessions']>().toEqualTypeOf<{ items: Session[]; nextCursor: string | null }>();
    expectTypeOf<RouterOutputs['chat']['deleteSession']>().toEqualTypeOf<{ sessionId: string }>();
    expectTypeOf<RouterInputs['chat']['sendMessage']>().toEqualTypeOf<{ sessionId: string; content: string }>();
    expectTypeOf<RouterInputs['chat']['listMessages']>().toEqualTypeOf<{
      sessionId: string;
      limit?: number | undefined;
      cursor?: string | null | undefined;
    }>();
    expectTypeOf<RouterInputs['chat']['createSession']>().toEqualTypeOf<{ title?: string | undefined } | void | undefined>();

    const client = http.clientFor(await app.idp.mintToken());
    const session = await client.chat.getActiveSession.query();
    expectTypeOf(session).toEqualTypeOf<Session>();
    expectTypeOf(client.chat.renameSession.mutate).parameter(0).toEqualTypeOf<{ sessionId: string; title: string }>();
    // @ts-expect-error: content is required
    await clientError(client.chat.sendMessage.mutate({ sessionId: session.id }));
  });
});

import { randomUUID } from 'node:crypto';
import { and, count, eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ApiClient, ChatEvent } from '../../client/index.js';
import { addMessageToSession } from '../../db/chat.js';
import { chatMessages, chatSessions, replyUsage } from '../../db/schema.js';
import { DEFAULT_SYSTEM_PROMPT } from '../../server/config.js';
import { clientError } from '../support/errors.js';
import { type EventWatch, watchEvents } from '../support/events.js';
import { type LanguageModelServer, startLanguageModelServer } from '../support/language-model-server.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

/** LLM_TIMEOUT_MS of the app that tests it; the others wait long enough never to time out in a test. */
const TIMEOUT_MS = 1_000;
const MODEL = 'test-model-1';

let llm: LanguageModelServer;
let app: TestApp;
let http: Awaited<ReturnType<typeof startHttpServer>>;
beforeAll(async () => {
  llm = await startLanguageModelServer();
  app = await startTestApp({ assistant: { baseUrl: llm.baseUrl, modelName: MODEL, timeoutMs: 60_000 } });
  http = await startHttpServer(app);
});
afterAll(async () => {
  await http.close();
  await app.close();
  await llm.close();
});

/** A new person in `tenantId` (a new organization unless given), signed in through the typed client. */
async function signIn(claims: Record<string, unknown> = {}, server = http) {
  const tenantId = (claims.tenantId as string | undefined) ?? randomUUID();
  const sub = randomUUID();
  const token = await app.idp.mintToken({ claims: { roles: ['Admin'], ...claims, sub, tenantId } });
  const client = server.clientFor(token);
  return { client, sub, tenantId, session: await client.chat.getActiveSession.query() };
}

type Reply = Extract<ChatEvent, { type: 'reply.completed' | 'reply.failed' }>;

/** Resolves with the event that ended the reply `messageId`. */
async function replyEnd(events: EventWatch, messageId: string): Promise<Reply> {
  let end: Reply | undefined;
  await events.until(() => {
    end = events.received
      .map((event) => event.data)
      .find((data): data is Reply => (data.type === 'reply.completed' || data.type === 'reply.failed') && data.message.id === messageId);
    if (!end) throw new Error('the reply has not ended yet');
  });
  return end!;
}

const deltasOf = (events: EventWatch, messageId: string) =>
  events.received.flatMap(({ data }) => (data.type === 'reply.delta' && data.messageId === messageId ? [data.text] : []));

async function messagesOf(client: ApiClient, sessionId: string) {
  return (await client.chat.listMessages.query({ sessionId })).items;
}

describe('assistant replies through the typed client, against an OpenAI-compatible server', () => {
  it('streams the reply as deltas in order, then completes it with the whole stored text, model and usage', async () => {
    const { client, session, sub } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();

    const { message, reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'What is tRPC?' });
    expect(message).toMatchObject({ role: 'user', content: 'What is tRPC?', status: 'complete' });
    expect(reply).toMatchObject({ role: 'assistant', content: '', status: 'streaming', sessionId: session.id });

    const request = await provider.request;
    expect(request.path).toBe('/v1/chat/completions');
    expect(request.headers.authorization).toBe('Bearer test-key');
    expect(request.body).toMatchObject({ model: MODEL, stream: true, stream_options: { include_usage: true } });
    expect(request.body.messages).toEqual([
      { role: 'system', content: DEFAULT_SYSTEM_PROMPT },
      { role: 'user', content: 'What is tRPC?' },
    ]);

    provider.text('tRPC ');
    await events.until(() => expect(deltasOf(events, reply!.id)).toEqual(['tRPC ']));
    // While it streams, listMessages shows the text so far.
    expect((await messagesOf(client, session.id)).at(-1)).toMatchObject({ id: reply!.id, content: 'tRPC ', status: 'streaming' });
    for (const piece of ['shares ', 'types ', 'end to end.']) provider.text(piece);
    provider.finish({ usage: { input: 21, output: 7 } });

    const end = await replyEnd(events, reply!.id);
    expect(end).toEqual({ type: 'reply.completed', message: { ...reply, content: 'tRPC shares types end to end.', status: 'complete' } });
    expect(deltasOf(events, reply!.id).join('')).toBe('tRPC shares types end to end.');
    expect(events.types().slice(0, 3)).toEqual(['message.created', 'message.created', 'session.updated']);
    expect(events.received[1]!.data).toEqual({ type: 'message.created', message: reply });
    expect(await messagesOf(client, session.id)).toEqual([message, end.message]);

    const [stored] = await app.db
      .select({ model: chatMessages.model, inputTokens: chatMessages.inputTokens, outputTokens: chatMessages.outputTokens })
      .from(chatMessages)
      .where(eq(chatMessages.id, reply!.id));
    expect(stored).toEqual({ model: MODEL, inputTokens: 21, outputTokens: 7 });
    const usage = await client.org.usage.query();
    const month = new Date().toISOString().slice(0, 7);
    expect(usage.items).toEqual([{ month, userId: sub, model: MODEL, replies: 1, inputTokens: 21, outputTokens: 7 }]);
    expect(usage.to.getTime()).toBeLessThanOrEqual(Date.now());
    events.close();
  });

  it('replays a reply exactly to a tab that reconnects mid-way: the placeholder as it began, then the missed deltas', async () => {
    const { client, session } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Tell me more' });
    provider.text('One. ');
    provider.text('Two. ');
    await events.until(() => expect(deltasOf(events, reply!.id).join('')).toBe('One. Two. '));
    provider.text('Three.');
    provider.finish();
    await replyEnd(events, reply!.id);
    events.close();

    const replayed = watchEvents(client, { lastEventId: events.received[0]!.id });
    await replayed.until(() => expect(replayed.received.length).toBe(events.received.length - 1));
    expect(replayed.received).toEqual(events.received.slice(1));
    expect(replayed.received[0]!.data).toMatchObject({ type: 'message.created', message: { id: reply!.id, content: '', status: 'streaming' } });
    replayed.close();
  });

  it('gives the model the latest messages within the count and character budget, oldest first, each in its role', async () => {
    const budgeted = await startTestApp({
      assistant: { baseUrl: llm.baseUrl, modelName: MODEL, systemPrompt: 'Be brief.', context: { maxMessages: 4, maxCharacters: 1_000 } },
    });
    const server = await startHttpServer(budgeted);
    try {
      const token = await budgeted.idp.mintToken({ claims: { sub: randomUUID(), tenantId: randomUUID() } });
      const client = server.clientFor(token);
      const session = await client.chat.getActiveSession.query();
      const ask = async (content: string, answer: string) => {
        const provider = llm.nextReply();
        const events = watchEvents(client);
        await events.connected();
        const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content });
        provider.text(answer);
        provider.finish();
        await replyEnd(events, reply!.id);
        events.close();
        return (await provider.request).body.messages;
      };
      await ask('first question', 'first answer');
      await ask('second question', 'second answer');
      // The fourth message back would pass the character budget with this one.
      await ask('x'.repeat(970), 'third answer');
      const sent = await ask('last question', 'last answer');
      expect(sent).toEqual([
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'x'.repeat(970) },
        { role: 'assistant', content: 'third answer' },
        { role: 'user', content: 'last question' },
      ]);
      const countLimited = await ask('one more', 'fine');
      // Four messages at most: the budget's count.
      expect(countLimited.slice(1)).toEqual([
        { role: 'assistant', content: 'third answer' },
        { role: 'user', content: 'last question' },
        { role: 'assistant', content: 'last answer' },
        { role: 'user', content: 'one more' },
      ]);
    } finally {
      await server.close();
      await budgeted.close();
    }
  });
});

describe('failed replies keep the text received, and say why in a word', () => {
  let impatient: TestApp;
  let server: Awaited<ReturnType<typeof startHttpServer>>;
  beforeAll(async () => {
    impatient = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, modelName: MODEL, timeoutMs: TIMEOUT_MS } });
    server = await startHttpServer(impatient);
  });
  afterAll(async () => {
    await server.close();
    await impatient.close();
  });

  async function failingReply(drive: (provider: ReturnType<LanguageModelServer['nextReply']>) => void) {
    const { client, session } = await signIn({}, server);
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Please answer' });
    drive(provider);
    const end = await replyEnd(events, reply!.id);
    events.close();
    return { end, client, session, reply: reply! };
  }

  it.each([
    ['a 500', 500],
    ['a 429', 429],
    ['a 401 (a wrong key)', 401],
  ])('the provider answering %s: failed, provider_error; its status and error type go to the log, not its words', async (_name, status) => {
    // Providers' messages can quote the request: "Invalid input: 'Please answer'…".
    const error = { error: { message: `Invalid input: 'Please answer' (key sk-…xyz)`, type: 'invalid_request_error', code: 'bad_input' } };
    const { end, reply } = await failingReply((provider) => provider.refuse(status, error));
    expect(end).toEqual({ type: 'reply.failed', reason: 'provider_error', message: { ...reply, status: 'failed' } });
    expect(JSON.stringify(end)).not.toContain('Invalid input');
    const logged = impatient.logs.find((line) => line.msg === 'Reply failed' && line.messageId === reply.id);
    expect(logged).toMatchObject({
      reason: 'provider_error',
      provider: {
        name: 'AI_APICallError',
        url: `${llm.baseUrl}/chat/completions`,
        statusCode: status,
        type: 'invalid_request_error',
        code: 'bad_input',
        ...(status === 401 ? { hint: 'check LLM_API_KEY' } : status === 429 ? { hint: 'the provider is rate-limiting this key' } : {}),
      },
    });
    expect(JSON.stringify(impatient.logs)).not.toContain('Please answer');
    expect(JSON.stringify(impatient.logs)).not.toContain('sk-');
  });

  it('the provider cutting the stream off: failed, with the text received kept', async () => {
    const { end, client, session } = await failingReply((provider) => {
      provider.text('Half an ');
      provider.text('answer');
      setTimeout(() => provider.cut(), 100);
    });
    expect(end).toMatchObject({ type: 'reply.failed', reason: 'provider_error', message: { content: 'Half an answer', status: 'failed' } });
    expect((await messagesOf(client, session.id)).at(-1)).toEqual(end.message);
  });

  it('the provider ending the stream without a finish_reason: failed, as cut short', async () => {
    const { end } = await failingReply((provider) => {
      provider.text('Unfinished');
      void provider.request.then(() => setTimeout(() => provider.end(), 50));
    });
    expect(end).toMatchObject({ type: 'reply.failed', reason: 'provider_error', message: { content: 'Unfinished' } });
  });

  it('the provider sending nothing for LLM_TIMEOUT_MS: failed, timeout, and its request is closed', async () => {
    let provider!: ReturnType<LanguageModelServer['nextReply']>;
    const started = Date.now();
    const { end } = await failingReply((reply) => (provider = reply));
    expect(end).toMatchObject({ type: 'reply.failed', reason: 'timeout', message: { content: '', status: 'failed' } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(TIMEOUT_MS);
    await provider.closed;
  });

  it('the provider going silent after some text: the wait is for the next piece, and the text is kept', async () => {
    const started = Date.now();
    const { end } = await failingReply((provider) => {
      // Text keeps coming for longer than LLM_TIMEOUT_MS in all: a long answer is not cut.
      for (let index = 0; index < 4; index++) setTimeout(() => provider.text(`${index} `), index * (TIMEOUT_MS / 2));
    });
    expect(end).toMatchObject({ type: 'reply.failed', reason: 'timeout', message: { content: '0 1 2 3 ' } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(2.5 * TIMEOUT_MS);
  });

  it('no session is left with a reply streaming: the next message is answered', async () => {
    const { client, session } = await failingReply((provider) => provider.refuse(503));
    const provider = llm.nextReply();
    const events = watchEvents(client);
    await events.connected();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Again?' });
    provider.text('Yes.');
    provider.finish();
    expect(await replyEnd(events, reply!.id)).toMatchObject({ type: 'reply.completed', message: { content: 'Yes.' } });
    // A failed reply is not given to the model again.
    expect((await provider.request).body.messages.map((message) => message.content)).toEqual([DEFAULT_SYSTEM_PROMPT, 'Please answer', 'Again?']);
    events.close();
  });
});

describe('one reply per session, stopping and deleting', () => {
  it('stopReply keeps the text so far (stopped, as reply.completed), closes the provider request, and the session takes messages again', async () => {
    const { client, session } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Write a long essay' });
    provider.text('The first ');
    provider.text('paragraph.');
    await events.until(() => expect(deltasOf(events, reply!.id).join('')).toBe('The first paragraph.'));

    const stopped = await client.chat.stopReply.mutate({ sessionId: session.id });
    expect(stopped).toEqual({ ...reply, content: 'The first paragraph.', status: 'stopped' });
    expect(await replyEnd(events, reply!.id)).toEqual({ type: 'reply.completed', message: stopped });
    await provider.closed;
    // Text the provider sends after the stop is not stored.
    provider.text(' More.');
    expect(await client.chat.stopReply.mutate({ sessionId: session.id })).toBeNull();
    expect((await messagesOf(client, session.id)).at(-1)).toEqual(stopped);

    const next = llm.nextReply();
    const { reply: second } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Shorter, please' });
    next.text('Fine.');
    next.finish();
    await replyEnd(events, second!.id);
    // The stopped reply's text is part of the conversation the model sees.
    expect((await next.request).body.messages.slice(1)).toEqual([
      { role: 'user', content: 'Write a long essay' },
      { role: 'assistant', content: 'The first paragraph.' },
      { role: 'user', content: 'Shorter, please' },
    ]);
    events.close();
  });

  it('sendMessage while the session’s reply streams answers CONFLICT and stores nothing; other sessions are free', async () => {
    const { client, session } = await signIn();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'First' });
    await provider.request;
    const before = await client.chat.getSession.query({ sessionId: session.id });
    const conflict = await clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Second' }));
    expect(conflict.data?.code).toBe('CONFLICT');
    expect((await messagesOf(client, session.id)).map((message) => message.content)).toEqual(['First', '']);
    // Not even the session's activity moved.
    expect(await client.chat.getSession.query({ sessionId: session.id })).toEqual(before);

    const other = await client.chat.createSession.mutate({ title: 'Another' });
    const elsewhere = llm.nextReply();
    const { reply: otherReply } = await client.chat.sendMessage.mutate({ sessionId: other.id, content: 'Meanwhile' });
    expect(otherReply).toMatchObject({ status: 'streaming' });
    await elsewhere.request;
    for (const live of [provider, elsewhere]) live.finish();
    await vi.waitFor(async () => {
      expect((await messagesOf(client, other.id)).at(-1)?.status).toBe('complete');
      expect((await messagesOf(client, session.id)).at(-1)).toMatchObject({ id: reply!.id, status: 'complete' });
    });
  });

  it('stopReply of a session that is not the caller’s answers NOT_FOUND and stops nothing', async () => {
    const ada = await signIn();
    const grace = await signIn({ tenantId: ada.tenantId });
    const provider = llm.nextReply();
    await ada.client.chat.sendMessage.mutate({ sessionId: ada.session.id, content: 'Mine' });
    await provider.request;
    expect((await clientError(grace.client.chat.stopReply.mutate({ sessionId: ada.session.id }))).data?.code).toBe('NOT_FOUND');
    expect((await messagesOf(ada.client, ada.session.id)).at(-1)?.status).toBe('streaming');
    provider.finish();
    await vi.waitFor(async () => expect((await messagesOf(ada.client, ada.session.id)).at(-1)?.status).toBe('complete'));
  });

  it('deleting the session stops its reply: the provider request is closed and nothing more is written', async () => {
    const { client, session } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Going away' });
    provider.text('Some ');
    await events.until(() => expect(deltasOf(events, reply!.id)).toHaveLength(1));
    await client.chat.deleteSession.mutate({ sessionId: session.id });
    await provider.closed;
    await vi.waitFor(() => expect(app.deps.replies!.running).toBe(0));
    await events.until(() => expect(events.types()).toContain('session.deleted'));
    // Nothing after it: a writer's next write finds the reply gone.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(events.types().at(-1)).toBe('session.deleted');
    expect(await app.db.select().from(chatMessages).where(eq(chatMessages.id, reply!.id))).toEqual([]);
    events.close();
  });

  it('nobody else’s stream sees any of it: a colleague, nor the same person in another organization', async () => {
    const ada = await signIn();
    const colleague = await signIn({ tenantId: ada.tenantId });
    // Ada herself, signed in to another organization of hers.
    const adaElsewhereToken = await app.idp.mintToken({ claims: { sub: ada.sub, tenantId: randomUUID() } });
    const watchers = [watchEvents(colleague.client), watchEvents(http.clientFor(adaElsewhereToken))];
    const own = watchEvents(ada.client);
    await Promise.all([...watchers, own].map((watch) => watch.connected()));
    const provider = llm.nextReply();
    const { reply } = await ada.client.chat.sendMessage.mutate({ sessionId: ada.session.id, content: 'Private' });
    provider.text('Only for Ada');
    provider.finish();
    await replyEnd(own, reply!.id);
    // Each watcher's own later event, so that anything of Ada's would have arrived before it.
    await colleague.client.chat.createSession.mutate({ title: 'Mine' });
    await watchers[0]!.until(() => expect(watchers[0]!.types()).toEqual(['session.updated', 'session.created']));
    expect(watchers[1]!.received).toEqual([]);
    for (const watch of [...watchers, own]) watch.close();
  });
});

describe('limits', () => {
  it('LLM_MAX_CONCURRENT_REPLIES: one more reply in this instance answers TOO_MANY_REQUESTS and stores nothing', async () => {
    const limited = await startTestApp({ assistant: { baseUrl: llm.baseUrl, maxConcurrentReplies: 1 } });
    const server = await startHttpServer(limited);
    try {
      const token = await limited.idp.mintToken({ claims: { sub: randomUUID(), tenantId: randomUUID() } });
      const client = server.clientFor(token);
      const first = await client.chat.getActiveSession.query();
      const second = await client.chat.createSession.mutate({});
      const provider = llm.nextReply();
      await client.chat.sendMessage.mutate({ sessionId: first.id, content: 'One' });
      await provider.request;
      const refused = await clientError(client.chat.sendMessage.mutate({ sessionId: second.id, content: 'Two' }));
      expect(refused.data?.code).toBe('TOO_MANY_REQUESTS');
      expect(await client.chat.listMessages.query({ sessionId: second.id })).toMatchObject({ items: [] });
      provider.finish();
      await vi.waitFor(() => expect(limited.deps.replies!.running).toBe(0));
      const next = llm.nextReply();
      await client.chat.sendMessage.mutate({ sessionId: second.id, content: 'Two, again' });
      next.finish();
      await vi.waitFor(() => expect(limited.deps.replies!.running).toBe(0));
    } finally {
      await server.close();
      await limited.close();
    }
  });

  it('the per-organization cap holds when its people send at once, across two instances on one database', async () => {
    const cap = 3;
    const first = await startTestApp({ assistant: { baseUrl: llm.baseUrl, maxRepliesPerOrganization: cap } });
    const second = await startTestApp({ alongside: first, assistant: { baseUrl: llm.baseUrl, maxRepliesPerOrganization: cap } });
    const servers = [await startHttpServer(first), await startHttpServer(second)];
    try {
      const tenantId = randomUUID();
      const people = await Promise.all(
        Array.from({ length: 8 }, async (_, index) => {
          // Both instances trust the first one's key set: tokens come from it.
          const token = await first.idp.mintToken({ claims: { sub: randomUUID(), tenantId } });
          const client = servers[index % 2]!.clientFor(token);
          return { client, session: await client.chat.getActiveSession.query() };
        }),
      );
      // One provider reply for each message that may be answered: no more requests may arrive.
      const providers = Array.from({ length: cap }, () => llm.nextReply());
      const results = await Promise.allSettled(
        people.map(({ client, session }) => client.chat.sendMessage.mutate({ sessionId: session.id, content: 'All at once' })),
      );
      const answered = results.filter((result) => result.status === 'fulfilled');
      expect(answered).toHaveLength(cap);
      // The refused people's sessions are as they were: still `New Chat`, activity unmoved.
      for (const [index, result] of results.entries()) {
        if (result.status === 'fulfilled') continue;
        const { client, session } = people[index]!;
        expect(await client.chat.getSession.query({ sessionId: session.id })).toEqual(session);
      }
      for (const result of results) {
        if (result.status === 'rejected') expect((result.reason as { data?: { code?: string } }).data?.code).toBe('TOO_MANY_REQUESTS');
      }
      const [stored] = await first.db
        .select({ count: count() })
        .from(chatMessages)
        .innerJoin(chatSessions, and(eq(chatSessions.id, chatMessages.sessionId), eq(chatSessions.organizationId, tenantId)));
      expect(stored?.count).toBe(2 * cap);
      for (const provider of providers) provider.finish();
      await vi.waitFor(() => expect(first.deps.replies!.running + second.deps.replies!.running).toBe(0));
    } finally {
      for (const server of servers) await server.close();
      await second.close();
      await first.close();
    }
  });
});

/** A message and its reply as a `sendMessage` on an instance that then died leaves them: streaming, its lease passed. */
async function leaveAbandonedReply(owner: { userId: string; organizationId: string; sessionId: string }) {
  const stored = await addMessageToSession(app.db, {
    ...owner,
    role: 'user',
    content: 'Hello?',
    titleIfFirst: 'Hello?',
    reply: { model: MODEL, leaseMs: 1, maxPerOrganization: 20, maxPerPerson: 3 },
  });
  if (stored.status !== 'stored' || !stored.reply) throw new Error(`not stored: ${stored.status}`);
  return stored.reply;
}

describe('replies that outlive their writer', () => {
  it('a reply left streaming by an instance that is gone is marked failed (interrupted) when a runner starts, and announced', async () => {
    const { client, session, sub, tenantId } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const stored = await leaveAbandonedReply({ userId: sub, organizationId: tenantId, sessionId: session.id });
    const restarted = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, leaseMs: 60_000 } });
    try {
      const end = await replyEnd(events, stored.id);
      expect(end).toMatchObject({ type: 'reply.failed', reason: 'interrupted', message: { id: stored.id, status: 'failed' } });
      const [usage] = await app.db.select().from(replyUsage).where(eq(replyUsage.messageId, stored.id));
      expect(usage).toMatchObject({ organizationId: tenantId, userId: sub, model: MODEL, inputTokens: null, outputTokens: null });
    } finally {
      await restarted.close();
      events.close();
    }
  });

  it('a reply whose provider is silent longer than a lease is kept alive by its writer, however often instances look', async () => {
    // A lease of 600 ms: renewed every 150 ms, looked for every 200 ms by this instance's own sweeper.
    const short = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, leaseMs: 600, timeoutMs: 60_000 } });
    const server = await startHttpServer(short);
    try {
      const { client, session } = await signIn({}, server);
      const events = watchEvents(client);
      await events.connected();
      const provider = llm.nextReply();
      const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Think hard' });
      await provider.request;
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      provider.text('Thought.');
      provider.finish();
      expect(await replyEnd(events, reply!.id)).toMatchObject({ type: 'reply.completed', message: { content: 'Thought.' } });
      events.close();
    } finally {
      await server.close();
      await short.close();
    }
  });

  it('a reply whose writer is gone no longer blocks its session: the next message ends it (interrupted) and is answered', async () => {
    const { client, session, sub, tenantId } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    // Before any instance has looked for it.
    const stored = await leaveAbandonedReply({ userId: sub, organizationId: tenantId, sessionId: session.id });
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Anyone?' });
    expect(await replyEnd(events, stored.id)).toMatchObject({ type: 'reply.failed', reason: 'interrupted' });
    provider.text('Here.');
    provider.finish();
    expect(await replyEnd(events, reply!.id)).toMatchObject({ type: 'reply.completed', message: { content: 'Here.' } });
    events.close();
  });

  it('shutting down ends the replies being written as failed (interrupted), keeping their text', async () => {
    const closing = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl } });
    const server = await startHttpServer(closing);
    const { client, session, sub, tenantId } = await signIn({}, server);
    // Ada's other tab, on the instance that stays.
    const watcher = watchEvents(http.clientFor(await app.idp.mintToken({ claims: { sub, tenantId } })));
    await watcher.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Long one' });
    provider.text('Begun');
    await watcher.until(() => expect(deltasOf(watcher, reply!.id)).toEqual(['Begun']));
    await server.close();
    await closing.close();
    // Seen on the instance that stays.
    expect(await replyEnd(watcher, reply!.id)).toMatchObject({
      type: 'reply.failed',
      reason: 'interrupted',
      message: { content: 'Begun', status: 'failed' },
    });
    await provider.closed;
    watcher.close();
  });
});

describe('without a language model, and without an assistant', () => {
  it('the demo responder streams a short reply word by word that says it is a demo', async () => {
    const demo = await startTestApp({ alongside: app, assistant: {} });
    const server = await startHttpServer(demo);
    try {
      const { client, session } = await signIn({}, server);
      const events = watchEvents(client);
      await events.connected();
      const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Hi there' });
      const end = await replyEnd(events, reply!.id);
      expect(end.type).toBe('reply.completed');
      expect(end.message.content).toMatch(/^This is the demo assistant, not a language model: .* You wrote “Hi there”\.$/);
      expect(deltasOf(events, reply!.id).length).toBeGreaterThan(3);
      expect(deltasOf(events, reply!.id).join('')).toBe(end.message.content);
      events.close();
    } finally {
      await server.close();
      await demo.close();
    }
  });

  it('ASSISTANT_REPLIES=off: sendMessage returns reply null and nothing else changes', async () => {
    const off = await startTestApp({ alongside: app });
    const server = await startHttpServer(off);
    try {
      const { client, session } = await signIn({}, server);
      const events = watchEvents(client);
      await events.connected();
      const first = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'One' });
      const second = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Two' });
      expect([first.reply, second.reply]).toEqual([null, null]);
      await events.atLeast(4);
      expect(events.types()).toEqual(['message.created', 'session.updated', 'message.created', 'session.updated']);
      expect(await client.chat.stopReply.mutate({ sessionId: session.id })).toBeNull();
      expect((await messagesOf(client, session.id)).map((message) => [message.role, message.status])).toEqual([
        ['user', 'complete'],
        ['user', 'complete'],
      ]);
      events.close();
    } finally {
      await server.close();
      await off.close();
    }
  });
});

describe('org.usage', () => {
  /** Usage rows as replies that ended at `at` leave them. */
  async function used(
    organizationId: string,
    rows: { userId: string; at: string; input: number | null; output: number | null; model?: string }[],
  ) {
    await app.db.insert(replyUsage).values(
      rows.map(({ userId, at, input, output, model = MODEL }) => ({
        messageId: randomUUID(),
        organizationId,
        userId,
        model,
        inputTokens: input,
        outputTokens: output,
        createdAt: new Date(at),
      })),
    );
  }

  it('sums replies and tokens per month (UTC) and per user, within from and to, for admins only', async () => {
    const admin = await signIn({ roles: ['Admin'] });
    const member = await signIn({ tenantId: admin.tenantId, roles: [] });
    const elsewhere = await signIn();
    await used(admin.tenantId, [
      { userId: 'u-1', at: '2026-01-31T23:59:59.999Z', input: 10, output: 5 },
      { userId: 'u-1', at: '2026-01-01T00:00:00.000Z', input: 1, output: 2 },
      { userId: 'u-2', at: '2026-01-15T12:00:00.000Z', input: 7, output: null },
      { userId: 'u-1', at: '2026-01-20T00:00:00.000Z', input: 4, output: 4, model: 'other-model' },
      { userId: 'u-1', at: '2026-02-01T00:00:00.000Z', input: 100, output: 50 },
      { userId: 'u-1', at: '2026-03-01T00:00:00.000Z', input: 1000, output: 500 },
    ]);
    await used(elsewhere.tenantId, [{ userId: 'u-1', at: '2026-01-10T00:00:00.000Z', input: 99, output: 99 }]);

    const usage = await admin.client.org.usage.query({ from: new Date('2026-01-01T00:00:00Z'), to: new Date('2026-03-01T00:00:00Z') });
    expect(usage.items).toEqual([
      { month: '2026-01', userId: 'u-1', model: 'other-model', replies: 1, inputTokens: 4, outputTokens: 4 },
      { month: '2026-01', userId: 'u-1', model: MODEL, replies: 2, inputTokens: 11, outputTokens: 7 },
      { month: '2026-01', userId: 'u-2', model: MODEL, replies: 1, inputTokens: 7, outputTokens: 0 },
      { month: '2026-02', userId: 'u-1', model: MODEL, replies: 1, inputTokens: 100, outputTokens: 50 },
    ]);
    expect(usage.nextCursor).toBeNull();

    // Paged, the same rows.
    const first = await admin.client.org.usage.query({ from: new Date('2026-01-01T00:00:00Z'), to: new Date('2026-03-01T00:00:00Z'), limit: 2 });
    const rest = await admin.client.org.usage.query({
      from: new Date('2026-01-01T00:00:00Z'),
      to: new Date('2026-03-01T00:00:00Z'),
      limit: 2,
      cursor: first.nextCursor,
    });
    expect([...first.items, ...rest.items]).toEqual(usage.items);
    // Paged with the default period (the last twelve months) too: the cursor keeps the period of the first page.
    const other = await signIn({ roles: ['Admin'] });
    const yesterday = new Date(Date.now() - 86_400_000);
    await used(other.tenantId, [
      { userId: 'u-a', at: yesterday.toISOString(), input: 1, output: 1 },
      { userId: 'u-b', at: yesterday.toISOString(), input: 2, output: 2 },
    ]);
    const recent = await other.client.org.usage.query({ limit: 1 });
    expect(recent.nextCursor).not.toBeNull();
    const next = await other.client.org.usage.query({ limit: 1, cursor: recent.nextCursor });
    expect(next.to).toEqual(recent.to);
    const month = yesterday.toISOString().slice(0, 7);
    expect([...recent.items, ...next.items].map((row) => [row.month, row.userId])).toEqual([
      [month, 'u-a'],
      [month, 'u-b'],
    ]);

    expect((await clientError(member.client.org.usage.query())).data?.code).toBe('FORBIDDEN');
    const backwards = await clientError(admin.client.org.usage.query({ from: new Date('2026-03-01'), to: new Date('2026-01-01') }));
    expect(backwards.data?.code).toBe('BAD_REQUEST');
  });

  it('keeps counting a reply whose session was deleted while it streamed', async () => {
    const { client, session, sub } = await signIn();
    const provider = llm.nextReply();
    await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Never mind' });
    await provider.request;
    await client.chat.deleteSession.mutate({ sessionId: session.id });
    await provider.closed;
    const usage = await client.org.usage.query();
    expect(usage.items).toEqual([
      { month: new Date().toISOString().slice(0, 7), userId: sub, model: MODEL, replies: 1, inputTokens: 0, outputTokens: 0 },
    ]);
  });

  it('logs carry ids, never the text of a message or a reply', async () => {
    const { client, session } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'my secret question' });
    provider.text('the secret answer');
    provider.finish({ usage: { input: 3, output: 3 } });
    await replyEnd(events, reply!.id);
    const logged = JSON.stringify(app.logs);
    expect(logged).toContain(reply!.id);
    expect(logged).not.toContain('my secret question');
    expect(logged).not.toContain('the secret answer');
    events.close();
  });
});

describe('what one person and one provider can take', () => {
  it('LLM_MAX_REPLIES_PER_PERSON: one more of the same person answers TOO_MANY_REQUESTS and stores nothing; a colleague goes on', async () => {
    const limited = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, maxRepliesPerPerson: 2, timeoutMs: 60_000 } });
    const server = await startHttpServer(limited);
    try {
      const ada = await signIn({}, server);
      const sessions = [ada.session, await ada.client.chat.createSession.mutate({}), await ada.client.chat.createSession.mutate({})];
      const providers = [llm.nextReply(), llm.nextReply()];
      for (const session of sessions.slice(0, 2)) await ada.client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Go' });
      await Promise.all(providers.map((provider) => provider.request));
      const refused = await clientError(ada.client.chat.sendMessage.mutate({ sessionId: sessions[2]!.id, content: 'And this' }));
      expect(refused.data?.code).toBe('TOO_MANY_REQUESTS');
      expect(refused.message).toMatch(/You have too many replies in progress/);
      expect(await messagesOf(ada.client, sessions[2]!.id)).toEqual([]);
      const colleague = await signIn({ tenantId: ada.tenantId }, server);
      const theirs = llm.nextReply();
      const { reply } = await colleague.client.chat.sendMessage.mutate({ sessionId: colleague.session.id, content: 'Mine?' });
      expect(reply?.status).toBe('streaming');
      for (const provider of [...providers, theirs]) provider.finish();
      await vi.waitFor(() => expect(limited.deps.replies!.running).toBe(0));
    } finally {
      await server.close();
      await limited.close();
    }
  });

  it('a reply stopped on another instance stops asking the provider within about a second, text or not', async () => {
    const other = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, timeoutMs: 60_000 } });
    const server = await startHttpServer(other);
    try {
      const { client, session, sub, tenantId } = await signIn({}, server);
      const provider = llm.nextReply();
      await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Slow to start' });
      await provider.request;
      // Stopped through the other instance, while the provider has sent nothing yet.
      const elsewhere = http.clientFor(await app.idp.mintToken({ claims: { sub, tenantId } }));
      expect(await elsewhere.chat.stopReply.mutate({ sessionId: session.id })).toMatchObject({ status: 'stopped' });
      await provider.closed;
      await vi.waitFor(() => expect(other.deps.replies!.running).toBe(0));
    } finally {
      await server.close();
      await other.close();
    }
  });

  it('a provider that ignores max_tokens is cut at 8 characters a token, and the reply ends complete', async () => {
    const capped = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, maxOutputTokens: 16, timeoutMs: 60_000 } });
    const server = await startHttpServer(capped);
    try {
      const { client, session } = await signIn({}, server);
      const events = watchEvents(client);
      await events.connected();
      const provider = llm.nextReply();
      const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Say a lot' });
      expect((await provider.request).body).toMatchObject({ max_tokens: 16 });
      for (let index = 0; index < 30; index++) provider.text('0123456789');
      const end = await replyEnd(events, reply!.id);
      expect(end).toMatchObject({ type: 'reply.completed', message: { status: 'complete' } });
      expect(end.message.content).toBe('0123456789'.repeat(13).slice(0, 128));
      await provider.closed;
      events.close();
    } finally {
      await server.close();
      await capped.close();
    }
  });

  it('a provider that drips text for longer than LLM_MAX_REPLY_SECONDS is cut: failed, timeout, text kept', async () => {
    const brief = await startTestApp({ alongside: app, assistant: { baseUrl: llm.baseUrl, maxReplyMs: 1_000, timeoutMs: 60_000 } });
    const server = await startHttpServer(brief);
    try {
      const { client, session } = await signIn({}, server);
      const events = watchEvents(client);
      await events.connected();
      const provider = llm.nextReply();
      const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Drip' });
      await provider.request;
      const drip = setInterval(() => provider.text('.'), 200);
      try {
        const end = await replyEnd(events, reply!.id);
        expect(end).toMatchObject({ type: 'reply.failed', reason: 'timeout', message: { status: 'failed' } });
        expect(end.message.content).toMatch(/^\.+$/);
      } finally {
        clearInterval(drip);
      }
      events.close();
    } finally {
      await server.close();
      await brief.close();
    }
  });

  it('a NUL or a lone surrogate from the provider is stored as U+FFFD, and the reply goes on', async () => {
    const { client, session } = await signIn();
    const events = watchEvents(client);
    await events.connected();
    const provider = llm.nextReply();
    const { reply } = await client.chat.sendMessage.mutate({ sessionId: session.id, content: 'Odd bytes' });
    provider.text('a\u0000b ');
    provider.text('c\ud800d');
    provider.finish();
    const end = await replyEnd(events, reply!.id);
    expect(end).toMatchObject({ type: 'reply.completed', message: { content: 'a\ufffdb c\ufffdd' } });
    events.close();
  });

  it('org.usage refuses dates PostgreSQL or a month cannot hold: BAD_REQUEST, not 500', async () => {
    const { client } = await signIn({ roles: ['Admin'] });
    for (const input of [{ to: new Date(8.64e15) }, { from: new Date(-8.64e15) }, { to: new Date('1999-12-31T00:00:00Z') }]) {
      expect((await clientError(client.org.usage.query(input))).data?.code).toBe('BAD_REQUEST');
    }
  });
});

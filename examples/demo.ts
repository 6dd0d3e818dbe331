// `npm run demo`: walks through the API with the typed client against a running server in local
// identity mode (`npm start` in another terminal). Two people of a new organization sign in;
// one chats while a second tab of hers receives the conversation live (chat.events), the
// assistant's replies streaming in, and stops one (chat.stopReply); the other is shown that the
// first one's session does not exist for them.
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { TRPCClientError } from '@trpc/client';
import { type ApiClient, type AppRouter, createApiClient } from '../client/index.js';
import { loadOrCreateLocalSigningKey, mintLocalToken } from '../server/auth/local-identity.js';
import { ConfigError, loadLocalIdentityConfig } from '../server/config.js';

const usage = 'Usage: npm run demo -- [--url http://127.0.0.1:3000]';

function fail(message: string): never {
  process.stderr.write(`\n✗ ${message}\n`);
  process.exit(1);
}

const say = (line = '') => process.stdout.write(`${line}\n`);
const step = (n: number, title: string) => say(`\n${n}. ${title}`);
const check = (ok: boolean, what: string) => (ok ? say(`   ✓ ${what}`) : fail(what));

const { values: args } = parseArgs({ options: { url: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
if (args.help) {
  say(usage);
  process.exit(0);
}

// The demo mints its tokens as `npm run token` does, so it needs the server in local identity mode.
let config;
try {
  config = loadLocalIdentityConfig();
} catch (error) {
  if (error instanceof ConfigError) fail(error.message);
  throw error;
}
const base = (args.url ?? `http://127.0.0.1:${config.port || 3000}`).replace(/\/+$/, '');

try {
  const health = await fetch(`${base}/healthz`);
  if (!health.ok) throw new Error(`/healthz answered ${health.status}`);
} catch {
  fail(`No server answers at ${base}. Start one with \`npm start\` in another terminal, or pass --url.`);
}

const key = await loadOrCreateLocalSigningKey(config.identity.keyFile);
const organization = `demo-${randomBytes(3).toString('hex')}`;

async function signIn(email: string, name: string, roles: string[]): Promise<ApiClient> {
  const token = await mintLocalToken(key, { email, name, tenantId: organization, roles, expiresInSeconds: 600 });
  return createApiClient({ url: `${base}/trpc`, getToken: () => token });
}

/** The tRPC error code of a refused call, or null when it succeeded. */
async function refusal(call: Promise<unknown>): Promise<string | null> {
  try {
    await call;
    return null;
  } catch (error) {
    if (error instanceof TRPCClientError) return (error as TRPCClientError<AppRouter>).data?.code ?? error.message;
    throw error;
  }
}

const short = (id: string) => id.slice(0, 8);

say(`Chat API demo against ${base}/trpc`);

step(1, `Two people of organization "${organization}" sign in; the first request provisions them (me)`);
const ada = await signIn('ada@example.com', 'Ada Lovelace', ['Admin']);
const grace = await signIn('grace@example.com', 'Grace Hopper', []);
let adaMe;
try {
  adaMe = await ada.me.query();
} catch (error) {
  if (error instanceof TRPCClientError && error.data?.code === 'UNAUTHORIZED') {
    fail(
      `The server refused a local token (${error.message}). Is it in local identity mode, with the same ` +
        'LOCAL_IDENTITY_KEY_FILE as this shell?',
    );
  }
  throw error;
}
const graceMe = await grace.me.query();
for (const me of [adaMe, graceMe]) {
  say(`   ${me.user.name} <${me.user.email}>: user ${me.user.id}, ${me.role} of "${me.organization.name}" (${me.organization.id})`);
}
check(adaMe.organization.id === graceMe.organization.id, 'one organization, two members');

step(2, "Ada's active session (getActiveSession creates one on first call)");
const session = await ada.chat.getActiveSession.query();
say(`   "${session.title}" ${short(session.id)}…, active: ${session.isActive}`);
check((await ada.chat.getActiveSession.query()).id === session.id, 'asking again returns the same session');

step(3, "Ada opens a second tab (chat.events), then asks three questions from the first (sendMessage)");
const secondTab = await signIn('ada@example.com', 'Ada Lovelace', ['Admin']);
// What the second tab hears, for the checks below: the questions, and how each reply ended.
const arrived: string[] = [];
const deltas = new Map<string, string>();
const deltaCounts = new Map<string, number>();
const endings = new Map<string, { status: string; content: string }>();
const sentAt = new Map<string, number>();
const since = (content: string) => `${(performance.now() - (sentAt.get(content) ?? Number.NaN)).toFixed(1)} ms after sending`;
let asking = '';
let tabConnected!: () => void;
const connected = new Promise<void>((resolve) => (tabConnected = resolve));
const tab = secondTab.chat.events.subscribe(undefined, {
  onStarted: () => tabConnected(),
  onData: ({ id, data }) => {
    switch (data.type) {
      case 'message.created':
        if (data.message.role === 'user') {
          say(`     tab 2 ← #${id} message.created ${JSON.stringify(data.message.content)} (${since(data.message.content)})`);
          arrived.push(data.message.content);
        } else {
          say(`     tab 2 ← #${id} message.created: the assistant's reply, ${data.message.status}`);
        }
        break;
      case 'session.updated':
        say(`     tab 2 ← #${id} session.updated "${data.session.title}"`);
        break;
      case 'reply.delta':
        if (!deltas.has(data.messageId)) process.stdout.write(`     tab 2 ← reply.delta…: `);
        deltas.set(data.messageId, (deltas.get(data.messageId) ?? '') + data.text);
        deltaCounts.set(data.messageId, (deltaCounts.get(data.messageId) ?? 0) + 1);
        process.stdout.write(data.text);
        break;
      case 'reply.completed':
      case 'reply.failed':
        if (deltas.has(data.message.id)) say();
        say(
          `     tab 2 ← #${id} ${data.type}: ${data.message.status}, ${data.message.content.length} characters ` +
            `in ${deltaCounts.get(data.message.id) ?? 0} reply.delta events (${since(asking)})`,
        );
        endings.set(data.message.id, data.message);
        break;
    }
  },
  onError: (error) => fail(`The second tab's stream failed: ${error.message}`),
});
await connected;

/** Resolves once `ready` holds, or fails the demo after `seconds`. */
async function waitFor(ready: () => boolean, seconds: number, what: string) {
  const deadline = Date.now() + seconds * 1000;
  while (!ready()) {
    if (Date.now() > deadline) fail(`${what} did not arrive within ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

const questions = [
  'How does tRPC share types between the server and the frontend?',
  'And where does Drizzle fit in?',
  'Thanks!',
];
let replies = 0;
for (const content of questions) {
  asking = content;
  sentAt.set(content, performance.now());
  const { message, reply } = await ada.chat.sendMessage.mutate({ sessionId: session.id, content });
  say(`   → ${message.createdAt.toISOString()} ${message.role}: ${content}`);
  if (!reply) say('     (the server runs without an assistant: ASSISTANT_REPLIES=off)');
  else replies += 1;
  // The reply streams in the background; the next question waits for it (one reply per session at a time).
  await waitFor(() => arrived.includes(content) && (!reply || endings.has(reply.id)), 60, 'The reply');
}
check(arrived.join('\n') === questions.join('\n'), 'the second tab received every question live, once each, in order');
check([...endings.values()].every((ending) => ending.status === 'complete'), `the second tab saw ${replies} replies stream in and complete`);

if (replies > 0) {
  step(4, 'Ada asks for something long, and stops the reply once it has begun (stopReply)');
  const content = 'Please write me a long essay about type safety.';
  asking = content;
  sentAt.set(content, performance.now());
  const { reply } = await ada.chat.sendMessage.mutate({ sessionId: session.id, content });
  say(`   → user: ${content}`);
  await waitFor(() => deltas.has(reply!.id) || endings.has(reply!.id), 60, 'The reply');
  const stopped = await ada.chat.stopReply.mutate({ sessionId: session.id });
  await waitFor(() => endings.has(reply!.id), 10, 'The end of the reply');
  // A reply short enough to end before the stop arrived is simply complete.
  say(`   stopReply: ${stopped ? `${stopped.status}, keeping its ${stopped.content.length} characters so far` : 'nothing was streaming any more'}`);
  check(endings.get(reply!.id)?.status === (stopped ? 'stopped' : 'complete'), 'the second tab saw the reply end as stopReply said');
  questions.push(content);
  replies += 1;
}
tab.unsubscribe();
const titled = await ada.chat.getSession.query({ sessionId: session.id });
say(`   The first message titled the session: "${titled.title}"`);

step(5, 'Paging back through the conversation, two messages a page (listMessages)');
let cursor: string | null = null;
let page = 0;
do {
  const result: Awaited<ReturnType<typeof ada.chat.listMessages.query>> = await ada.chat.listMessages.query({
    sessionId: session.id,
    limit: 2,
    cursor,
  });
  page += 1;
  say(`   page ${page}: ${result.items.map((m) => `${m.role} ${JSON.stringify(m.content.length > 40 ? `${m.content.slice(0, 40)}…` : m.content)}`).join(', ')}`);
  cursor = result.nextCursor;
} while (cursor);
say('   (nextCursor null: the start of the conversation)');

step(6, 'Ada renames the session and starts another (renameSession, createSession, listSessions)');
await ada.chat.renameSession.mutate({ sessionId: session.id, title: 'Stack questions' });
await ada.chat.createSession.mutate({ title: 'Holiday plans' });
for (const listed of (await ada.chat.listSessions.query()).items) {
  say(`   ${listed.isActive ? '●' : '○'} "${listed.title}" ${short(listed.id)}…, last activity ${listed.updatedAt.toISOString()}`);
}

step(7, "Grace, in the same organization, tries Ada's session");
check((await refusal(grace.chat.getSession.query({ sessionId: session.id }))) === 'NOT_FOUND', 'getSession: NOT_FOUND');
check(
  (await refusal(grace.chat.sendMessage.mutate({ sessionId: session.id, content: 'Hi Ada' }))) === 'NOT_FOUND',
  'sendMessage: NOT_FOUND, nothing stored',
);
check(
  (await refusal(grace.chat.listMessages.query({ sessionId: session.id }))) === 'NOT_FOUND',
  'listMessages: NOT_FOUND',
);
const gracesSessions = (await grace.chat.listSessions.query()).items;
check(gracesSessions.length === 0, 'her session list is empty: none of Ada’s sessions shows up');
const adaMessages = await ada.chat.listMessages.query({ sessionId: session.id });
const total = questions.length + replies;
check(adaMessages.items.length === total, `Ada still has exactly her ${total} messages (${questions.length} hers, ${replies} the assistant's)`);

say('\nDone.');

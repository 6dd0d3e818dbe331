import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createApiClient } from '../../client/index.js';
import type { DatabaseHandle } from '../../db/database.js';
import { createAccessTokenVerifier } from '../../server/auth/access-token.js';
import { createRemoteKeySet } from '../../server/auth/key-set.js';
import { type ServerDeps, authenticate, createInnerContext } from '../../server/context.js';
import { createSharedCursorCodec } from '../../server/cursor.js';
import { type HttpServerDeps, createHttpServer } from '../../server/http.js';
import { DEFAULT_HEAVY_CALLS_PER_PERSON, createInFlightLimit } from '../../server/in-flight-limit.js';
import { createLogger } from '../../server/logger.js';
import { DEFAULT_MEMBER_CACHE, type MemberCache, createMemberCache } from '../../server/member-cache.js';
import {
  DEFAULT_EVENT_RETENTION_MS,
  DEFAULT_SUBSCRIPTIONS_PER_INSTANCE,
  DEFAULT_SUBSCRIPTIONS_PER_PERSON,
  createChatEventHub,
} from '../../server/chat-events.js';
import { createLanguageModel } from '../../server/language-model.js';
import { type ReplyRunnerOptions, createReplyRunner } from '../../server/replies.js';
import { loadConfig } from '../../server/config.js';
import { createMetrics, reportingTo, watchState } from '../../server/metrics.js';
import { createWriteLimit } from '../../server/write-limit.js';
import { createCaller } from '../../server/root.js';
import { openTestDatabase } from './database.js';
import { type TestIdentityProvider, startIdentityProvider } from './identity-provider.js';

/**
 * The real server parts wired as `npm start` wires them, on the test database, trusting the
 * test identity provider's key set. Log lines are kept in `logs` for assertions. `onStatement`
 * hears every statement sent (see `DatabaseObserver`); `members` replaces the member cache.
 */
export async function startTestApp(
  options: {
    onStatement?: (text: string) => void;
    members?: MemberCache;
    heavyCallsPerPerson?: number;
    /**
     * RATE_LIMIT_WRITES_PER_MINUTE; unlike in production, off unless given: tests write many
     * times a second as one person.
     */
    writesPerMinute?: number;
    /** A migrated database to use instead of this run's (closed with the app). */
    database?: DatabaseHandle;
    /**
     * Another instance of the server beside this app: on its database, trusting its identity
     * provider. Closing the new one closes neither.
     */
    alongside?: { database: DatabaseHandle; idp: TestIdentityProvider };
    /** How often event streams check the membership (default: the member cache's lifetime). */
    membershipCheckMs?: number;
    subscriptionsPerPerson?: number;
    subscriptionsPerInstance?: number;
    /**
     * Assistant replies: none (the default, as with ASSISTANT_REPLIES=off), or from the language
     * model at `baseUrl` (a test's own server), else the demo responder. Other runner settings
     * as given, else the production defaults.
     */
    assistant?: false | (Partial<Omit<ReplyRunnerOptions, 'db' | 'log' | 'model'>> & { baseUrl?: string });
  } = {},
) {
  const database = options.alongside?.database ?? options.database ?? (await openTestDatabase({ onStatement: options.onStatement }));
  const idp = options.alongside?.idp ?? (await startIdentityProvider());
  const logs: Record<string, unknown>[] = [];
  // The server's own logger (its redaction and error serializer), writing into `logs`.
  const log = createLogger({ level: 'debug', destination: { write: (line: string) => void logs.push(JSON.parse(line)) } });
  // The production defaults (MEMBER_CACHE_MAX_ENTRIES, MEMBER_CACHE_TTL_SECONDS) unless given.
  const members = options.members ?? createMemberCache();
  const metrics = createMetrics();
  const reporting = reportingTo(metrics);
  const writes = createWriteLimit(options.writesPerMinute ?? 0);
  const chatEvents = createChatEventHub({
    db: database.db,
    listen: database.listen,
    log,
    retentionMs: DEFAULT_EVENT_RETENTION_MS,
    subscriptionsPerPerson: options.subscriptionsPerPerson ?? DEFAULT_SUBSCRIPTIONS_PER_PERSON,
    subscriptionsPerInstance: options.subscriptionsPerInstance ?? DEFAULT_SUBSCRIPTIONS_PER_INSTANCE,
    membershipCheckMs: options.membershipCheckMs ?? DEFAULT_MEMBER_CACHE.ttlMs,
    onMembershipChanged: (change) => members.forget(change),
  });
  await chatEvents.start();
  watchState(metrics, { pool: database.pool, chatEvents: chatEvents.stats, writeLimitPeople: () => writes.people });
  const replies = options.assistant ? startReplyRunner(options.assistant) : undefined;
  await replies?.start();
  function startReplyRunner({ baseUrl, ...settings }: Exclude<typeof options.assistant, false | undefined>) {
    // The production defaults, as `loadConfig` gives them.
    const defaults = loadConfig({}).assistant;
    if (defaults.mode !== 'on') throw new Error('replies are on by default');
    const modelName = settings.modelName ?? 'test-model';
    return createReplyRunner({
      ...defaults,
      db: database.db,
      log,
      model: createLanguageModel(baseUrl ? { kind: 'openai-compatible', baseUrl, apiKey: 'test-key', model: modelName } : { kind: 'demo' }),
      modelName,
      onEnded: reporting.onReplyEnded(modelName),
      ...settings,
    });
  }
  const deps: ServerDeps = {
    db: database.db,
    log,
    verifyAccessToken: createAccessTokenVerifier({
      // The production defaults (FRONTEGG_JWKS_MAX_AGE_SECONDS, FRONTEGG_JWKS_COOLDOWN_SECONDS).
      keySet: createRemoteKeySet({
        jwksUrl: idp.jwksUrl,
        issuer: idp.issuer,
        maxAgeMs: 600_000,
        cooldownMs: 30_000,
        log,
        onFetched: reporting.onKeySetFetched,
      }),
      issuer: idp.issuer,
      audience: [idp.audience],
      onAccepted: reporting.onTokenAccepted,
    }),
    cursors: await createSharedCursorCodec(database.db),
    members,
    heavyCalls: createInFlightLimit(options.heavyCallsPerPerson ?? DEFAULT_HEAVY_CALLS_PER_PERSON),
    writes,
    metrics,
    chatEvents,
    replies,
  };

  /**
   * A `createCaller` caller whose context is built from this token exactly as for an HTTP request.
   * `provisionEveryRequest` is the server with MEMBER_CACHE_TTL_SECONDS=0, which sees a change made
   * in the database (a deactivation) on the next request.
   */
  async function callerFor(token: string | undefined, { provisionEveryRequest = false } = {}) {
    const auth = await authenticate(deps, token === undefined ? undefined : `Bearer ${token}`);
    const members = provisionEveryRequest ? createMemberCache({ maxEntries: 0, ttlMs: 0 }) : deps.members;
    return createCaller(createInnerContext({ ...deps, members }, auth));
  }

  return {
    db: database.db,
    database,
    idp,
    deps,
    logs,
    callerFor,
    /**
     * A caller signed in with a new token carrying these claims (the rest as
     * `idp.mintToken` fills them in). Each token is a distinct string, as a refreshed token is.
     */
    async as(claims: Record<string, unknown>, options: { provisionEveryRequest?: boolean } = {}) {
      return callerFor(await idp.mintToken({ claims }), options);
    },
    async close() {
      await replies?.close();
      await chatEvents.close();
      if (options.alongside) return;
      await idp.close();
      await database.close();
    },
  };
}

export type TestApp = Awaited<ReturnType<typeof startTestApp>>;

/**
 * The HTTP server of `app` on a free loopback port, with the typed client a frontend uses.
 * `overrides` replaces parts, e.g. another database or key set.
 */
export async function startHttpServer(app: TestApp, overrides: Partial<HttpServerDeps> = {}) {
  const server = createHttpServer({ ...app.deps, pingDatabase: app.database.ping, ...overrides });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    clientFor: (token: string | undefined) => createApiClient({ url: `${url}/trpc`, getToken: () => token }),
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

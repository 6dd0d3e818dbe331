import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { type Database, openDatabase } from '../db/database.js';
import { type AccessTokenVerifier, createAccessTokenVerifier } from './auth/access-token.js';
import { createRemoteKeySet } from './auth/key-set.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER, createLocalKeySet, loadOrCreateLocalSigningKey } from './auth/local-identity.js';
import type { Config } from './config.js';
import { createSharedCursorCodec } from './cursor.js';
import { type HttpServerDeps, createHttpServer } from './http.js';
import type { Logger } from './logger.js';
import { createInFlightLimit } from './in-flight-limit.js';
import { createMemberCache } from './member-cache.js';
import { createChatEventHub } from './chat-events.js';
import { createLanguageModel, modelNameOf } from './language-model.js';
import { type ReplyRunner, createReplyRunner, startSweepingAbandonedReplies } from './replies.js';
import { type Metrics, createMetrics, reportingTo, serveMetrics, watchState } from './metrics.js';
import { createWriteLimit } from './write-limit.js';

/** How often event streams check the membership when the member cache is off (`MEMBER_CACHE_TTL_SECONDS=0`). */
const DEFAULT_MEMBERSHIP_CHECK_MS = 5_000;

export interface RunningServer {
  url: string;
  /** Where Prometheus scrapes, when `METRICS_PORT` is set. */
  metricsUrl: string | undefined;
  /** Stops accepting connections, lets in-flight requests finish, then closes the database. */
  close(): Promise<void>;
}

/**
 * Opens the database, applies pending migrations and builds the parts the server is made of from
 * `config`: what `startServer` serves, and what `npm run bench` measures without HTTP.
 */
export async function openServerDeps(config: Config, log: Logger) {
  const database = openDatabase(config.database);
  // First: behind a pooler it did not expect, the migration lock could be taken on one server
  // connection and released on another.
  await database.checkSettings();
  await database.migrate();
  const poolMode = config.database.kind === 'postgres' ? (config.database.poolMode ?? 'session') : undefined;
  log.info({ database: database.kind, poolMode }, 'Database ready, migrations applied');
  const metrics = createMetrics();
  const members = createMemberCache(config.memberCache);
  const chatEvents = createChatEventHub({
    db: database.db,
    listen: database.listen,
    log,
    ...config.chatEvents,
    // A deactivated member's streams end within the time their rows may be remembered.
    membershipCheckMs: config.memberCache.ttlMs || DEFAULT_MEMBERSHIP_CHECK_MS,
    // Frontegg's webhooks, received by any instance: this one's remembered rows go at once.
    onMembershipChanged: (change) => members.forget(change),
  });
  await chatEvents.start();
  const writes = createWriteLimit(config.writesPerMinute);
  watchState(metrics, { pool: database.pool, chatEvents: chatEvents.stats, writeLimitPeople: () => writes.people });
  if (config.fronteggWebhookSecret) log.info({ path: '/webhooks/frontegg' }, 'Accepting Frontegg webhooks');
  const replies = createConfiguredReplies(config.assistant, database.db, log, metrics);
  await replies?.start();
  // Without an assistant, replies an earlier deployment left streaming still end.
  const sweeper =
    config.assistant.mode === 'off' ? await startSweepingAbandonedReplies({ db: database.db, log, leaseMs: config.assistant.leaseMs }) : undefined;
  const deps: HttpServerDeps = {
    db: database.db,
    log,
    verifyAccessToken: await createConfiguredVerifier(config, log, metrics),
    cursors: await createSharedCursorCodec(database.db),
    pingDatabase: database.ping,
    procedureTimeoutMs: config.procedureTimeoutMs,
    members,
    heavyCalls: createInFlightLimit(config.heavyCallsPerPerson),
    writes,
    metrics,
    chatEvents,
    replies,
    idleTimeoutMs: config.idleTimeoutMs,
    maxConnections: config.maxConnections,
    fronteggWebhookSecret: config.fronteggWebhookSecret,
    corsOrigins: config.corsOrigins,
  };
  return { deps, database, sweeper };
}

/** Opens the database, applies pending migrations and listens. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const { deps, database, sweeper } = await openServerDeps(config, log);
  // First: a metrics port that cannot be had stops the start before the API takes any traffic.
  const metricsServer = config.metrics && (await serveMetrics(deps.metrics, config.metrics));
  if (metricsServer) log.info({ url: metricsServer.url }, 'Serving Prometheus metrics');
  const server = createHttpServer(deps);
  server.listen(config.port, config.host);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  log.info({ url, port }, 'Listening');

  return {
    url,
    metricsUrl: metricsServer?.url,
    async close() {
      const closed = once(server, 'close');
      // Since Node 19, close() also closes the keep-alive connections idle at that moment.
      server.close();
      // Event streams never end by themselves: they end now, telling clients to reconnect (to
      // another instance). Their connections fall idle once that answer is out: closed then,
      // before an EventSource (which waits 3 s) can send its next request on them.
      await deps.chatEvents.close();
      const sweep = setInterval(() => server.closeIdleConnections(), 50);
      try {
        await closed;
      } finally {
        clearInterval(sweep);
      }
      // Once every request has its answer (a reply a message in flight started included): the
      // replies being written here end as failed (`interrupted`), keeping their text, while the
      // database is still open. Subscribers on other instances see them end.
      await deps.replies?.close();
      await sweeper?.stop();
      await metricsServer?.close();
      await database.close();
    },
  };
}

/** The reply runner `assistant` asks for, or none; says in the log what replies come from. */
function createConfiguredReplies(assistant: Config['assistant'], db: Database, log: Logger, metrics: Metrics): ReplyRunner | undefined {
  if (assistant.mode === 'off') {
    log.info('Assistant replies off (ASSISTANT_REPLIES=off): the LLM_* settings but LLM_REPLY_LEASE_SECONDS are not used');
    return undefined;
  }
  const { model } = assistant;
  if (model.kind === 'demo') {
    log.warn('DEMO ASSISTANT: no LLM_BASE_URL is set, so replies come from a built-in demo responder, not a language model');
  } else {
    const baseUrl = withoutCredentials(model.baseUrl);
    if (/\/chat\/completions\/?$/.test(baseUrl)) {
      log.warn({ baseUrl }, 'LLM_BASE_URL ends at /chat/completions: set it to the part before (…/v1); the path is added to it');
    }
    log.info({ model: model.model, baseUrl }, 'Assistant replies on');
  }
  const modelName = modelNameOf(model);
  return createReplyRunner({
    ...assistant,
    db,
    log,
    model: createLanguageModel(model),
    modelName,
    onEnded: reportingTo(metrics).onReplyEnded(modelName),
  });
}

async function createConfiguredVerifier(
  {
    identity,
    tokenCacheEntries: cacheEntries,
    tokenCacheMaxBytes: cacheMaxBytes,
  }: Pick<Config, 'identity' | 'tokenCacheEntries' | 'tokenCacheMaxBytes'>,
  log: Logger,
  metrics: Metrics,
): Promise<AccessTokenVerifier> {
  const { onTokenAccepted: onAccepted, onKeySetFetched: onFetched } = reportingTo(metrics);
  if (identity.mode === 'frontegg') {
    log.info({ issuer: identity.issuer, jwksUrl: identity.jwksUrl, audience: identity.audience }, 'Verifying Frontegg tokens');
    return createAccessTokenVerifier({
      keySet: createRemoteKeySet({
        jwksUrl: identity.jwksUrl,
        issuer: identity.issuer,
        ...identity.keySet,
        log,
        onFetched,
      }),
      issuer: identity.issuer,
      audience: identity.audience,
      cacheEntries,
      cacheMaxBytes,
      onAccepted,
    });
  }
  const key = await loadOrCreateLocalSigningKey(identity.keyFile);
  log.warn(
    { keyFile: identity.keyFile, kid: key.kid },
    'LOCAL IDENTITY MODE: no Frontegg environment is configured, so only tokens signed with this key (`npm run token`, the web page\'s "sign in as") are ' +
      'trusted. Set FRONTEGG_BASE_URL to verify real Frontegg tokens. Never run this way in production.',
  );
  return createAccessTokenVerifier({
    keySet: createLocalKeySet(key),
    issuer: LOCAL_ISSUER,
    audience: [LOCAL_AUDIENCE],
    cacheEntries,
    cacheMaxBytes,
    onAccepted,
  });
}

/** A URL as it may be logged: any user name or password in it removed. */
function withoutCredentials(url: string) {
  const parsed = new URL(url);
  parsed.username = '';
  parsed.password = '';
  return parsed.toString();
}

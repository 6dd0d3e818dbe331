import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * What an operator graphs and alerts on, counted whether or not a metrics port serves it (an
 * increment costs less than a microsecond). Labels take values from small fixed sets: procedure
 * paths, tRPC codes, outcomes; never a user, organization or session id.
 */
export function createMetrics() {
  const registry = new Registry();
  const registers = [registry];
  const counter = <Label extends string>(name: string, help: string, labelNames: readonly Label[] = []) =>
    new Counter({ name, help, labelNames, registers });

  const metrics = {
    registry,
    /** Errors the procedures' middleware counted, so that the HTTP handler counts only the others. */
    countedErrors: new WeakSet<Error>(),
    requests: counter(
      'chat_requests_total',
      'tRPC calls answered, by procedure and tRPC code (OK for success); subscriptions count once, as they open',
      ['procedure', 'code'],
    ),
    requestDuration: new Histogram({
      name: 'chat_request_duration_seconds',
      help: 'Time from a tRPC call reaching its procedure to its answer (for a subscription: to its stream starting)',
      labelNames: ['procedure'] as const,
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15],
      registers,
    }),
    subscriptionsEnded: counter(
      'chat_subscriptions_ended_total',
      'chat.events streams the server ended with an error after they opened, by tRPC code (UNAUTHORIZED: the token expired; FORBIDDEN: the membership was removed; SERVICE_UNAVAILABLE: a shutdown, or the database)',
      ['code'],
    ),
    tokenVerifications: counter(
      'chat_token_verifications_total',
      'Access tokens accepted: by an RS256 signature check, or remembered from one',
      ['method'],
    ),
    tokenRefusals: counter(
      'chat_token_refusals_total',
      'Calls refused for their access token, by reason (key_set_unavailable answers 503, the rest 401)',
      ['reason'],
    ),
    keySetFetches: counter(
      'chat_key_set_fetches_total',
      "Fetches of the issuer's signing key set (JWKS), by outcome",
      ['outcome'],
    ),
    provisioned: counter(
      'chat_provisioned_total',
      'Rows created by just-in-time provisioning (source sign-in) or by Frontegg webhooks (source webhook)',
      ['kind', 'source'],
    ),
    memberCacheLookups: counter(
      'chat_member_cache_lookups_total',
      'Signed-in calls that reached provisioning and provisioned their member rows (miss), or needed no provisioning of their own: remembered, or one already under way (hit)',
      ['result'],
    ),
    databaseUnavailable: counter(
      'chat_database_unavailable_total',
      'Calls and webhooks answered 503 because the database could not be reached or was overloaded',
    ),
    limited: counter(
      'chat_limited_total',
      "Calls refused (429) before any database work for one person's limits in this instance: writes_per_minute (RATE_LIMIT_WRITES_PER_MINUTE) or calls_in_progress (HEAVY_CALLS_PER_PERSON)",
      ['procedure', 'limit'],
    ),
    webhooks: counter(
      'chat_frontegg_webhooks_total',
      'Frontegg webhook deliveries, by how they were answered (applied, ignored; refused: 401, invalid: 400, unavailable: 503, failed: 500)',
      ['outcome'],
    ),
    replies: counter('chat_replies_total', 'Assistant replies this instance wrote, by how they ended', ['outcome']),
    replyTokens: counter(
      'chat_reply_tokens_total',
      'Tokens the language model reported for replies, by model and kind (input, output)',
      ['model', 'kind'],
    ),
  };

  // Families with few label values start at zero: an alert on a rate sees 0, not "no data".
  for (const method of ['signature', 'remembered']) metrics.tokenVerifications.inc({ method }, 0);
  for (const outcome of ['ok', 'failed']) metrics.keySetFetches.inc({ outcome }, 0);
  for (const kind of ['organization', 'user', 'membership']) {
    for (const source of ['sign-in', 'webhook']) metrics.provisioned.inc({ kind, source }, 0);
  }
  for (const result of ['hit', 'miss']) metrics.memberCacheLookups.inc({ result }, 0);
  metrics.databaseUnavailable.inc(0);
  return metrics;
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Counts the rows a provisioning created. */
export function countProvisioned(
  metrics: Metrics,
  created: { organization: boolean; user: boolean; membership: boolean },
  source: 'sign-in' | 'webhook',
) {
  for (const kind of ['organization', 'user', 'membership'] as const) if (created[kind]) metrics.provisioned.inc({ kind, source });
}

/**
 * The hooks through which the token verifier, the key set and the reply runner report to
 * `metrics`: one wiring for `npm start` and the tests' app.
 */
export function reportingTo(metrics: Metrics) {
  return {
    onTokenAccepted: (method: 'signature' | 'remembered') => metrics.tokenVerifications.inc({ method }),
    onKeySetFetched: (outcome: 'ok' | 'failed') => metrics.keySetFetches.inc({ outcome }),
    /** A reply's end, and the tokens `model` reported for it. */
    onReplyEnded:
      (model: string) =>
      (outcome: string, usage: { inputTokens?: number | undefined; outputTokens?: number | undefined } | undefined) => {
        metrics.replies.inc({ outcome });
        if (usage?.inputTokens) metrics.replyTokens.inc({ model, kind: 'input' }, usage.inputTokens);
        if (usage?.outputTokens) metrics.replyTokens.inc({ model, kind: 'output' }, usage.outputTokens);
      },
  };
}

/** Readings taken from the server's parts each time the metrics are scraped. */
export interface StateSources {
  pool(): { size: number; inUse: number; waiting: number };
  chatEvents(): { subscriptions: number; eventsSent: number };
  /** People whose write bucket is not full. */
  writeLimitPeople(): number;
}

/** Gauges (and the count of events sent) read from the server's parts at each scrape. */
export function watchState(metrics: Metrics, sources: StateSources) {
  const registers = [metrics.registry];
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  gauge('chat_db_pool_size', 'Connections the database pool may open (DATABASE_POOL_SIZE; 1 for the embedded PGlite)', () => sources.pool().size);
  gauge('chat_db_pool_in_use', 'Pool connections running a statement or holding a transaction now', () => sources.pool().inUse);
  gauge('chat_db_pool_waiting', 'Statements and transactions waiting for a pool connection now: queued, or sent behind another on a busy connection', () => sources.pool().waiting);
  gauge('chat_write_limit_people', "People whose write bucket in this instance is not full: the write limit's memory (at most 100,000)", () => sources.writeLimitPeople());
  gauge('chat_subscriptions_open', 'chat.events streams open on this instance', () => sources.chatEvents().subscriptions);
  let eventsCounted = 0;
  new Counter({
    name: 'chat_events_sent_total',
    help: 'Chat events sent to chat.events streams (each stream counts its own)',
    registers,
    collect() {
      const { eventsSent } = sources.chatEvents();
      // A counter never goes down; a count that did (it cannot) would fail every later scrape.
      if (eventsSent > eventsCounted) this.inc(eventsSent - eventsCounted);
      eventsCounted = eventsSent;
    },
  });
}

export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

/**
 * Serves `GET /metrics` in Prometheus' text format on a port of its own (never the API's), with
 * Node's default process metrics added to `metrics`.
 */
export async function serveMetrics(metrics: Metrics, { port, host }: { port: number; host: string }): Promise<MetricsServer> {
  collectDefaultMetrics({ register: metrics.registry });
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not found: the metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('Method not allowed\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      () => res.writeHead(500, { 'content-type': 'text/plain' }).end('Could not collect the metrics\n'),
    );
  });
  server.listen(port, host);
  await once(server, 'listening');
  const address = server.address() as AddressInfo;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${address.port}/metrics`,
    async close() {
      const closed = once(server, 'close');
      server.close();
      server.closeAllConnections();
      await closed;
    },
  };
}

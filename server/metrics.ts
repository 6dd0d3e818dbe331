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

  const metrics = {
    registry,
    /** Errors the procedures' middleware counted, so that the HTTP handler counts only the others. */
    countedErrors: new WeakSet<Error>(),
    requests: new Counter({
      name: 'chat_requests_total',
      help: 'tRPC calls answered, by procedure and tRPC code (OK for success); subscriptions count once, as they open',
      labelNames: ['procedure', 'code'] as const,
      registers,
    }),
    requestDuration: new Histogram({
      name: 'chat_request_duration_seconds',
      help: 'Time from a tRPC call reaching its procedure to its answer (for a subscription: to its stream starting)',
      labelNames: ['procedure'] as const,
      buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15],
      registers,
    }),
    tokenVerifications: new Counter({
      name: 'chat_token_verifications_total',
      help: 'Access tokens accepted: by an RS256 signature check, or remembered from one',
      labelNames: ['method'] as const,
      registers,
    }),
    tokenRefusals: new Counter({
      name: 'chat_token_refusals_total',
      help: 'Calls refused for their access token, by reason (key_set_unavailable answers 503, the rest 401)',
      labelNames: ['reason'] as const,
      registers,
    }),
    keySetFetches: new Counter({
      name: 'chat_key_set_fetches_total',
      help: "Fetches of the issuer's signing key set (JWKS), by outcome",
      labelNames: ['outcome'] as const,
      registers,
    }),
    provisioned: new Counter({
      name: 'chat_provisioned_total',
      help: 'Rows created by just-in-time provisioning (source sign-in) or by Frontegg webhooks (source webhook)',
      labelNames: ['kind', 'source'] as const,
      registers,
    }),
    memberCacheLookups: new Counter({
      name: 'chat_member_cache_lookups_total',
      help: "Signed-in calls whose member rows came from this instance's memory (hit) or from the database (miss)",
      labelNames: ['result'] as const,
      registers,
    }),
    databaseUnavailable: new Counter({
      name: 'chat_database_unavailable_total',
      help: 'Calls and webhooks answered 503 because the database could not be reached or was overloaded',
      registers,
    }),
    rateLimited: new Counter({
      name: 'chat_rate_limited_total',
      help: 'Writes refused (429) for going over RATE_LIMIT_WRITES_PER_MINUTE, by procedure',
      labelNames: ['procedure'] as const,
      registers,
    }),
    webhooks: new Counter({
      name: 'chat_frontegg_webhooks_total',
      help: 'Frontegg webhook deliveries, by how they were answered (applied, ignored; refused: 401, invalid: 400, unavailable: 503, failed: 500)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    replies: new Counter({
      name: 'chat_replies_total',
      help: "Assistant replies this instance wrote, by how they ended",
      labelNames: ['outcome'] as const,
      registers,
    }),
    replyTokens: new Counter({
      name: 'chat_reply_tokens_total',
      help: 'Tokens the language model reported for replies, by model and kind (input, output)',
      labelNames: ['model', 'kind'] as const,
      registers,
    }),
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

/** Counts a reply's end, and the tokens `model` reported for it. */
export function countReply(metrics: Metrics, model: string, outcome: string, usage: { inputTokens?: number | undefined; outputTokens?: number | undefined } | undefined) {
  metrics.replies.inc({ outcome });
  if (usage?.inputTokens) metrics.replyTokens.inc({ model, kind: 'input' }, usage.inputTokens);
  if (usage?.outputTokens) metrics.replyTokens.inc({ model, kind: 'output' }, usage.outputTokens);
}

/** Readings taken from the server's parts each time the metrics are scraped. */
export interface StateSources {
  pool(): { size: number; inUse: number; waiting: number };
  chatEvents(): { subscriptions: number; eventsSent: number };
}

/** Gauges (and the count of events sent) read from the server's parts at each scrape. */
export function watchState(metrics: Metrics, sources: StateSources) {
  const registers = [metrics.registry];
  new Gauge({
    name: 'chat_db_pool_size',
    help: 'Connections the database pool may open (DATABASE_POOL_SIZE; 1 for the embedded PGlite)',
    registers,
    collect() {
      this.set(sources.pool().size);
    },
  });
  new Gauge({
    name: 'chat_db_pool_in_use',
    help: 'Pool connections running a statement or holding a transaction now',
    registers,
    collect() {
      this.set(sources.pool().inUse);
    },
  });
  new Gauge({
    name: 'chat_db_pool_waiting',
    help: 'Statements and transactions waiting for a pool connection now',
    registers,
    collect() {
      this.set(sources.pool().waiting);
    },
  });
  new Gauge({
    name: 'chat_subscriptions_open',
    help: 'chat.events streams open on this instance',
    registers,
    collect() {
      this.set(sources.chatEvents().subscriptions);
    },
  });
  let eventsCounted = 0;
  new Counter({
    name: 'chat_events_sent_total',
    help: 'Chat events sent to chat.events streams (each stream counts its own)',
    registers,
    collect() {
      const { eventsSent } = sources.chatEvents();
      this.inc(eventsSent - eventsCounted);
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
  // Scrapers keep their connection; it must not hold a shutdown open.
  server.keepAliveTimeout = 5_000;
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

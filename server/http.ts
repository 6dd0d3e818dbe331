import { randomUUID } from 'node:crypto';
import http from 'node:http';
import cors from 'cors';
import type { TRPCError } from '@trpc/server';
import { getHTTPStatusCodeFromError } from '@trpc/server/http';
import { createHTTPHandler } from '@trpc/server/adapters/standalone';
import { ZodError } from 'zod';
import { AccessTokenError } from './auth/access-token.js';
import { MAX_BATCH_SIZE, MAX_BODY_BYTES } from '../client/limits.js';
import { type ServerDeps, createRequestContext } from './context.js';
import { withDeadline } from './deadline.js';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS } from './config.js';
import { appRouter } from './root.js';
import { WriteRateLimitedError } from './trpc.js';
import { createFronteggWebhookHandler } from './webhooks/frontegg.js';

export interface HttpServerDeps extends ServerDeps {
  /** Resolves when the database answers; `/readyz` reports it. */
  pingDatabase: () => Promise<void>;
  /**
   * A connection with no byte moving either way for this long is closed (default 30 s): a client
   * that stops reading its answer frees the memory the answer holds.
   */
  idleTimeoutMs?: number;
  /** Connections open at once; more are refused (default 10,000). */
  maxConnections?: number;
  /** The secret of Frontegg's webhook (`FRONTEGG_WEBHOOK_SECRET`); without it `/webhooks/frontegg` is 404. */
  fronteggWebhookSecret?: string | undefined;
  /** Origins whose pages may call `/trpc` (`CORS_ORIGINS`); none: no cross-origin access. */
  corsOrigins?: readonly string[] | undefined;
}

const READINESS_TIMEOUT_MS = 2_000;
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;
// Node checks the two limits above this often (default 30 s, which made them act at 40 s and 60 s).
const LIMITS_CHECKED_EVERY_MS = 1_000;

const requestIdPattern = /^[\w.:-]{1,128}$/;

/**
 * tRPC under `/trpc`, plus `/healthz` (the process runs), `/readyz` (the database answers) and,
 * with a secret, `/webhooks/frontegg`.
 */
export function createHttpServer(deps: HttpServerDeps): http.Server {
  /** The log of one request: every line carries the id its response carries. */
  const requestLog = (req: http.IncomingMessage) => deps.log.child({ requestId: req.headers['x-request-id'] });

  // tRPC reports a subscription's refusal twice: when the call fails, and again as it formats the
  // error for the stream. It is logged once.
  const logged = new WeakSet<TRPCError>();
  const trpcHandler = createHTTPHandler({
    router: appRouter,
    basePath: '/trpc/',
    maxBodySize: MAX_BODY_BYTES,
    maxBatchSize: MAX_BATCH_SIZE,
    // A write over the rate limit: when to try again, as HTTP says it (the longest wait of a batch).
    responseMeta({ errors }) {
      const waits = errors.flatMap(({ cause }) => (cause instanceof WriteRateLimitedError ? [cause.retryAfterSeconds] : []));
      return waits.length > 0 ? { headers: { 'retry-after': String(Math.max(...waits)) } } : {};
    },
    createContext: ({ req, res }) => createRequestContext(deps, req, res, requestLog(req)),
    // Once per failed call, with the request id the response carries.
    onError({ error, path, type, ctx, req }) {
      if (logged.has(error)) return;
      logged.add(error);
      if (!deps.metrics.countedErrors.has(error)) {
        // Not seen by the procedures' middleware: a stream that ended after it opened (its token
        // expired, its membership went, the server shuts down), or a call refused before any
        // procedure ran (an unknown path, an unreadable batch), whose path is the client's text.
        if (type === 'subscription') deps.metrics.subscriptionsEnded.inc({ code: error.code });
        else deps.metrics.requests.inc({ procedure: '(none)', code: error.code });
      }
      const log = ctx?.log ?? requestLog(req);
      const status = getHTTPStatusCodeFromError(error);
      // A 503 with no cause is one we chose (event streams ended by a shutdown): no failure to report.
      const chosen = error.code === 'SERVICE_UNAVAILABLE' && error.cause === undefined;
      if (status >= 500 && !chosen) log.error({ err: error.cause ?? error, path, code: error.code, status }, 'Request failed');
      else log.info({ path, code: error.code, status, ...refusal(error) }, 'Request refused');
    },
  });

  const { fronteggWebhookSecret: secret } = deps;
  const fronteggWebhook = secret
    ? createFronteggWebhookHandler({ db: deps.db, secret, metrics: deps.metrics, forgetMembers: (change) => deps.members.forget(change) })
    : undefined;

  // Browsers preflight every call: the token travels in `Authorization`, batches as JSON, and an
  // EventSource that reconnects sends `Last-Event-ID`. The response's request id is readable.
  const allowCrossOrigin = deps.corsOrigins?.length
    ? cors({
        origin: [...deps.corsOrigins],
        methods: ['GET', 'POST'],
        allowedHeaders: ['Authorization', 'Content-Type', 'Last-Event-ID'],
        exposedHeaders: ['x-request-id'],
        maxAge: 600,
      })
    : undefined;

  const server = http.createServer({ connectionsCheckingInterval: LIMITS_CHECKED_EVERY_MS }, (req, res) => {
    const incoming = req.headers['x-request-id'];
    const requestId = typeof incoming === 'string' && requestIdPattern.test(incoming) ? incoming : randomUUID();
    // From here on the header holds the id this response carries, whatever the client sent.
    req.headers['x-request-id'] = requestId;
    res.setHeader('x-request-id', requestId);
    // Shutting down: a request on a connection kept alive from before is answered, and the
    // connection closed after it, so that the client's next one goes to another instance.
    if (!server.listening) res.setHeader('connection', 'close');

    // tRPC parses the URL itself; here the path before any query string is enough to route.
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const pathname = queryAt === -1 ? url : url.slice(0, queryAt);
    if (pathname.startsWith('/trpc/')) {
      if (!allowCrossOrigin) return trpcHandler(req, res);
      return allowCrossOrigin(req, res, () => void trpcHandler(req, res));
    }
    if (pathname === '/healthz') return sendJson(res, 200, { status: 'ok' });
    if (pathname === '/webhooks/frontegg' && fronteggWebhook) {
      const log = requestLog(req);
      fronteggWebhook(req, res, log).catch((error: unknown) => {
        log.error({ err: error }, 'Frontegg webhook failed');
        if (!res.headersSent) sendJson(res, 500, { error: 'Internal server error' });
      });
      return;
    }
    if (pathname === '/readyz') {
      const timedOut = () => new Error(`timed out after ${READINESS_TIMEOUT_MS} ms`);
      withDeadline(deps.pingDatabase(), READINESS_TIMEOUT_MS, timedOut).then(
        () => sendJson(res, 200, { status: 'ready' }),
        (error: unknown) => {
          deps.log.warn({ err: error, requestId }, 'Readiness check failed: database unavailable');
          sendJson(res, 503, { status: 'unavailable', reason: 'database' });
        },
      );
      return;
    }
    sendJson(res, 404, { error: 'Not found' });
  });
  // A client gets this long to send its headers, and its whole request (slow-sending clients).
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  // With no listener for 'timeout', Node destroys a socket idle this long, and what it buffered goes.
  server.timeout = deps.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  server.maxConnections = deps.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  return server;
}

/**
 * What the log says of a refusal: the message of one we made, the fields of invalid input, and
 * nothing of what a parser said (its message can quote the request: bad JSON, a message's text).
 */
function refusal(error: TRPCError): { message?: string; invalidFields?: string[] } {
  if (error.cause === undefined || error.cause instanceof AccessTokenError || error.cause instanceof WriteRateLimitedError) {
    return { message: error.message };
  }
  if (error.cause instanceof ZodError) return { invalidFields: error.cause.issues.map((issue) => issue.path.join('.')) };
  return {};
}

function sendJson(res: http.ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

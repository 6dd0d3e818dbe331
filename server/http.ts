import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { getHTTPStatusCodeFromError } from '@trpc/server/http';
import { createHTTPHandler } from '@trpc/server/adapters/standalone';
import { type ServerDeps, createRequestContext } from './context.js';
import { appRouter } from './root.js';

export interface HttpServerDeps extends ServerDeps {
  /** Resolves when the database answers; `/readyz` reports it. */
  pingDatabase: () => Promise<void>;
}

const READINESS_TIMEOUT_MS = 2_000;
const MAX_BODY_BYTES = 1024 * 1024;
const requestIdPattern = /^[\w.:-]{1,128}$/;

/** tRPC under `/trpc`, plus `/healthz` (the process runs) and `/readyz` (the database answers). */
export function createHttpServer(deps: HttpServerDeps): http.Server {
  const trpcHandler = createHTTPHandler({
    router: appRouter,
    basePath: '/trpc/',
    maxBodySize: MAX_BODY_BYTES,
    createContext: ({ req, res }) =>
      createRequestContext(deps, req.headers, deps.log.child({ requestId: res.getHeader('x-request-id') })),
    onError({ error, path, ctx }) {
      const log = ctx?.log ?? deps.log;
      const status = getHTTPStatusCodeFromError(error);
      if (status >= 500) log.error({ err: error.cause ?? error, path, code: error.code }, 'Request failed');
      else log.debug({ path, code: error.code, message: error.message }, 'Request refused');
    },
  });

  return http.createServer((req, res) => {
    const incoming = req.headers['x-request-id'];
    const requestId = typeof incoming === 'string' && requestIdPattern.test(incoming) ? incoming : randomUUID();
    res.setHeader('x-request-id', requestId);

    // tRPC parses the URL itself; here the path before any query string is enough to route.
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const pathname = queryAt === -1 ? url : url.slice(0, queryAt);
    if (pathname.startsWith('/trpc/')) return trpcHandler(req, res);
    if (pathname === '/healthz') return sendJson(res, 200, { status: 'ok' });
    if (pathname === '/readyz') {
      withTimeout(deps.pingDatabase(), READINESS_TIMEOUT_MS).then(
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
}

function sendJson(res: http.ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

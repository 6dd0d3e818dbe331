// The load generator, in a worker thread: autocannon's client never shares an event loop with a
// server under test (each server is a process of its own).
import { parentPort, workerData } from 'node:worker_threads';
import autocannon from 'autocannon';

export interface LoadRequest {
  url: string;
  path: string;
  /** Sent in turn, one per request; empty sends no Authorization header. */
  tokens: string[];
  connections: number;
  /** Seconds to run, or… */
  durationSeconds?: number;
  /** …how many requests to send. */
  amount?: number;
}

export interface LoadResult {
  requests: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  /** Answers other than 2xx, plus connection errors and timeouts. */
  failures: number;
}

const request = workerData as LoadRequest;
let next = 0;
const options: autocannon.Options = {
  url: request.url,
  connections: request.connections,
  // With `amount`, autocannon notices the end only at its next sample: sample often.
  ...(request.amount ? { amount: request.amount, sampleInt: 50 } : { duration: request.durationSeconds ?? 5 }),
  requests: [
    {
      method: 'GET',
      path: request.path,
      setupRequest(req) {
        const token = request.tokens[next++ % request.tokens.length];
        return token ? { ...req, headers: { ...req.headers, authorization: `Bearer ${token}` } } : req;
      },
    },
  ],
};
// Outside the main thread autocannon leaves its histograms raw, for the caller to aggregate
// (its `aggregateResult`, missing from @types/autocannon).
const aggregate = (autocannon as unknown as { aggregateResult(results: unknown[], opts: autocannon.Options): autocannon.Result })
  .aggregateResult;
const result = aggregate([await autocannon(options)], options);
const seconds = (result.finish.getTime() - result.start.getTime()) / 1000;
parentPort?.postMessage({
  requests: result.requests.total,
  seconds,
  perSecond: result.requests.total / seconds,
  p50Ms: result.latency.p50,
  p99Ms: result.latency.p99,
  failures: result.non2xx + result.errors + result.timeouts,
} satisfies LoadResult);

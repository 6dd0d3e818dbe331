// The memory bound: 100,000 distinct tokens through the real verifier and member cache, as
// `npm start` configures them, in a process of its own (`node --expose-gc`). Reports the heap
// after a full collection, before and after, to bench/run.ts over IPC.
import { pino } from 'pino';
import { openServerDeps } from '../server/app.js';
import { loadConfig } from '../server/config.js';
import { authenticate, createInnerContext } from '../server/context.js';
import { createCaller } from '../server/root.js';
import type { MintRequest } from './mint-worker.js';
import { newUsers } from './tokens.js';
import { startWorker } from './worker.js';

const HEAP_RUN_TOKENS = 100_000;
const PEOPLE = 1_000;
const MINTING_THREADS = 2;

export interface HeapReport {
  tokens: number;
  people: number;
  signatureChecks: number;
  rememberedPeople: number;
  heapBeforeMb: number;
  heapAfterMb: number;
}

const gc = globalThis.gc;
if (!gc) throw new Error('run with node --expose-gc');
const heapMb = () => {
  gc();
  return process.memoryUsage().heapUsed / 2 ** 20;
};

const config = loadConfig();
if (config.identity.mode !== 'local') throw new Error('the bench signs its own tokens: run it without FRONTEGG_*');
const { deps, database, sweeper } = await openServerDeps(config, pino({ level: 'error' }));
const users = newUsers(PEOPLE, 50);
const heapBeforeMb = heapMb();

const perThread = Math.ceil(HEAP_RUN_TOKENS / MINTING_THREADS);
await Promise.all(
  Array.from({ length: MINTING_THREADS }, (_, thread) => {
    const request: MintRequest = {
      keyFile: config.identity.mode === 'local' ? config.identity.keyFile : '',
      users,
      from: thread * perThread,
      to: Math.min(HEAP_RUN_TOKENS, (thread + 1) * perThread),
      chunk: 500,
    };
    const worker = startWorker(new URL('./mint-worker.ts', import.meta.url), request);
    // One chunk at a time per thread: tokens are used as they arrive and then dropped.
    let queue = Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      worker.on('error', reject);
      worker.on('message', (message: string[] | 'done') => {
        queue = queue.then(async () => {
          if (message === 'done') return resolve();
          for (const token of message) {
            await createCaller(createInnerContext(deps, await authenticate(deps, `Bearer ${token}`))).me();
          }
        });
        queue.catch(reject);
      });
    }).finally(() => worker.terminate());
  }),
);

// As the server reports them on its metrics port.
const verifications = await deps.metrics.tokenVerifications.get();
const report: HeapReport = {
  tokens: HEAP_RUN_TOKENS,
  people: PEOPLE,
  signatureChecks: verifications.values.find((value) => value.labels.method === 'signature')?.value ?? 0,
  rememberedPeople: deps.members.size,
  heapBeforeMb,
  heapAfterMb: heapMb(),
};
await deps.chatEvents.close();
await deps.replies?.close();
await sweeper?.stop();
await database.close();
process.send?.(report, () => process.exit(0));

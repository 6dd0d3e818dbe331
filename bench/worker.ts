import { Worker } from 'node:worker_threads';

/**
 * A worker thread running the TypeScript module at `url`. On Node 20 a worker does not inherit
 * tsx's loader from `--import tsx`, so a one-line script registers it inside the thread first.
 */
export function startWorker(url: URL, workerData: unknown): Worker {
  const script = `import('tsx/esm/api').then(({ tsImport }) => tsImport(${JSON.stringify(url.href)}, ${JSON.stringify(url.href)}))`;
  return new Worker(script, { eval: true, workerData });
}

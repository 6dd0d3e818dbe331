// Signs tokens on another thread, so that a 100,000-token run is not bound by RSA signing.
import { parentPort, workerData } from 'node:worker_threads';
import { loadOrCreateLocalSigningKey } from '../server/auth/local-identity.js';
import { type BenchUser, tokenFor } from './tokens.js';

export interface MintRequest {
  keyFile: string;
  users: BenchUser[];
  /** Nonces to mint, `from` inclusive to `to` exclusive; token n is for user n modulo the users. */
  from: number;
  to: number;
  chunk: number;
}

const { keyFile, users, from, to, chunk } = workerData as MintRequest;
const key = await loadOrCreateLocalSigningKey(keyFile);
for (let start = from; start < to; start += chunk) {
  const nonces = Array.from({ length: Math.min(chunk, to - start) }, (_, index) => start + index);
  parentPort?.postMessage(await Promise.all(nonces.map((nonce) => tokenFor(key, users[nonce % users.length]!, nonce))));
}
parentPort?.postMessage('done');

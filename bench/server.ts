// One server under test, in a process of its own so that it has the event loop to itself:
// `node --import tsx bench/server.ts <floor|seed|ours>`, started by bench/run.ts with the
// environment `npm start` reads. It reports its URL over IPC and answers requests for its
// counters: the RS256 checks, which ours reports on its metrics port as in production
// (`chat_token_verifications_total`), and the seed's verifier through its accept hook. Statements
// are not counted here; PostgreSQL counts them (bench/statements.ts).
import { pino } from 'pino';
import { startServer } from '../server/app.js';
import { loadConfig } from '../server/config.js';
import { type Counters, type ServerMessage, newCounters } from './protocol.js';
import { startFloorServer } from './floor.js';
import { startSeedServer } from './seed.js';
import { sample } from '../tests/support/prometheus.js';

const kind = process.argv[2];
const config = loadConfig();
const log = pino({ level: 'error' });
let seedCounters: Counters = newCounters();
const onTokenAccepted = (how: 'signature' | 'remembered') => {
  if (how === 'signature') seedCounters.signatureChecks += 1;
};

const ours = kind === 'ours' ? await startServer({ ...config, metrics: { port: 0, host: '127.0.0.1' } }, log) : undefined;
const server =
  ours ??
  (kind === 'seed' ? await startSeedServer(config, { onTokenAccepted }) : kind === 'floor' ? await startFloorServer(config) : undefined);
if (!server) throw new Error(`unknown server kind ${kind}; expected floor, seed or ours`);
const metricsUrl = ours?.metricsUrl;

/** The RS256 checks ours has reported on its metrics port so far. */
async function signatureChecksReported(url: string) {
  return sample(await (await fetch(url)).text(), 'chat_token_verifications_total', { method: 'signature' }) ?? Number.NaN;
}
let reportedAtReset = metricsUrl ? await signatureChecksReported(metricsUrl) : 0;

async function counters(): Promise<Counters> {
  if (!metricsUrl) return seedCounters;
  return { signatureChecks: (await signatureChecksReported(metricsUrl)) - reportedAtReset };
}

process.on('message', async (message: ServerMessage) => {
  if (message === 'reset') {
    seedCounters = newCounters();
    if (metricsUrl) reportedAtReset = await signatureChecksReported(metricsUrl);
    process.send?.({ reset: true });
  }
  if (message === 'counters') process.send?.({ counters: await counters() });
  if (message === 'stop') void server.close().then(() => process.exit(0));
});
process.send?.({ url: server.url });

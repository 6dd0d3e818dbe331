// One server under test, in a process of its own so that it has the event loop to itself:
// `node --import tsx bench/server.ts <floor|seed|ours>`, started by bench/run.ts with the
// environment `npm start` reads. It reports its URL over IPC and answers requests for its
// counters: the RS256 checks its verifier reports through its accept hook. Statements are not
// counted here; PostgreSQL counts them (bench/statements.ts).
import { pino } from 'pino';
import { startServer } from '../server/app.js';
import { loadConfig } from '../server/config.js';
import { type Counters, type ServerMessage, newCounters } from './protocol.js';
import { startFloorServer } from './floor.js';
import { startSeedServer } from './seed.js';

const kind = process.argv[2];
const config = loadConfig();
const log = pino({ level: 'error' });
let counters: Counters = newCounters();
const onTokenAccepted = (how: 'signature' | 'remembered') => {
  if (how === 'signature') counters.signatureChecks += 1;
};

const server =
  kind === 'ours'
    ? await startServer(config, log, { onTokenAccepted })
    : kind === 'seed'
      ? await startSeedServer(config, { onTokenAccepted })
      : kind === 'floor'
        ? await startFloorServer(config)
        : undefined;
if (!server) throw new Error(`unknown server kind ${kind}; expected floor, seed or ours`);

process.on('message', (message: ServerMessage) => {
  if (message === 'reset') counters = newCounters();
  if (message === 'counters') process.send?.({ counters });
  if (message === 'stop') void server.close().then(() => process.exit(0));
});
process.send?.({ url: server.url });

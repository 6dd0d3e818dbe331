// `npm run bench`: the authenticated hot path, measured side by side in one run on this machine.
// Three servers, each a process of its own, take turns under the same load from autocannon in a
// worker thread: a bare tRPC server answering a constant (the floor), the seed's design (the
// baseline) and ours. They share a new database on the PostgreSQL server of DATABASE_URL (or of
// 127.0.0.1:5432 when that answers), dropped at the end; with no PostgreSQL each has its own
// embedded PGlite. It reports; it asserts nothing about timings.
//
// It measures the servers as they ship and counts from the outside. Statements and transactions
// per request come from PostgreSQL itself, its pg_stat_statements extension (bench/statements.ts):
// the servers take turns, so the bench database's counts, reset before a server's round and read
// right after it, are that server's. Without the extension (PostgreSQL not loading its library,
// or no PostgreSQL at all) those columns read n/a and the report says how to enable it. RS256
// checks are what ours reports on its Prometheus metrics port (the seed's verifier reports them
// through its accept hook), collected over IPC.
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { loadOrCreateLocalSigningKey } from '../server/auth/local-identity.js';
import { createDatabase } from '../db/throwaway-database.js';
import { type FanOutResult, measureFanOut } from './fanout.js';
import type { HeapReport } from './heap.js';
import type { LoadRequest, LoadResult } from './load.js';
import { type Counters, type ServerMessage, type ServerReport, newCounters } from './protocol.js';
import { type StatementCounts, openStatementCounter } from './statements.js';
import { type PgBouncer, findPgBouncer, startPgBouncer } from '../tests/support/pgbouncer.js';
import { type BenchUser, newUsers, tokenFor } from './tokens.js';
import { startWorker } from './worker.js';

const CONNECTIONS = 32;
const WARMUP_SECONDS = 1;
const MEASURE_SECONDS = 3;
const ROUNDS = 3;
const MANY_USERS = 200;
const FIRST_LOGINS = 2_000;
const PATH = '/trpc/chat.getActiveSession';
// The bound chosen for what 100,000 distinct tokens may add to the heap: the token cache keeps
// at most 10,000 (2-3 KB each with their identity), the member cache 10,000 people.
const HEAP_GROWTH_LIMIT_MB = 40;
// Live events: 100 subscribers of one organization, 20 people with 5 tabs each.
const FANOUT_PEOPLE = 20;
const FANOUT_TABS = 5;
const FANOUT_ROUNDS = 30;

type Kind = 'floor' | 'seed' | 'ours';
/**
 * The servers compared: `ours` as configured by default; `transaction` is ours with
 * DATABASE_POOL_MODE=transaction on the same direct connection (the setting's own cost), and
 * `pgbouncer` the same behind a real PgBouncer in transaction mode (the setting and the pooler).
 */
type Name = Kind | 'transaction' | 'pgbouncer';

interface Row {
  scenario: string;
  name: Name;
  /** The run reported: the median round. */
  load: LoadResult;
  /**
   * Over every measured round: what PostgreSQL ran for the server (undefined without
   * pg_stat_statements), what the server counted itself, how many requests, how many failed.
   */
  statements: StatementCounts | undefined;
  counters: Counters;
  requests: number;
  failures: number;
}

const work = await mkdtemp(join(os.tmpdir(), 'bench-'));
const keyFile = join(work, 'signing-key.json');
const key = await loadOrCreateLocalSigningKey(keyFile);
const serverUrl = await benchDatabaseServer();
const database = serverUrl ? await createDatabase(serverUrl.url, 'bench') : undefined;
// Before any server starts, so that the extension exists when they run their first statement.
const statementCounter = await openStatementCounter(database?.url);
const children: ChildProcess[] = [];

/**
 * The PostgreSQL server to measure on: DATABASE_URL's, else one answering on this machine's
 * default port without a password (as on the development and CI machines). The targets are
 * about PostgreSQL over the network; without one the run falls back to PGlite.
 */
async function benchDatabaseServer(): Promise<{ url: string; source: string } | undefined> {
  if (process.env.DATABASE_URL) return { url: process.env.DATABASE_URL, source: 'DATABASE_URL' };
  const local = 'postgres://postgres@127.0.0.1:5432/postgres';
  const probe = postgres(local, { max: 1, connect_timeout: 2, onnotice: () => {} });
  try {
    await probe`select 1`;
    return { url: local, source: `DATABASE_URL unset; the server answering at ${new URL(local).host}` };
  } catch {
    return undefined;
  } finally {
    await probe.end({ timeout: 1 });
  }
}

/** The environment `npm start` reads, for a server of this run. */
function serverEnv(name: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'error',
    NODE_ENV: 'development',
    // The chat path as people use it: the assistant's replies would make every measured write
    // wait for a reply (one per session at a time) and measure the demo responder.
    ASSISTANT_REPLIES: 'off',
    // The fan-out rounds send each person's messages faster than a person may write; the write
    // limit is not what is measured (the warm path it costs is a read, which it never touches).
    RATE_LIMIT_WRITES_PER_MINUTE: '0',
    LOCAL_IDENTITY_KEY_FILE: keyFile,
    PGLITE_DATA_DIR: join(work, name),
    DATABASE_URL: database?.url ?? '',
    ...extra,
  };
  for (const variable of Object.keys(env)) if (variable.startsWith('FRONTEGG_')) delete env[variable];
  return env;
}

function spawn(script: string, args: string[], env: NodeJS.ProcessEnv, execArgv: string[] = []) {
  const child = fork(new URL(script, import.meta.url), args, {
    env,
    execArgv: [...execArgv, '--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(child);
  return child;
}

async function startServer(name: Name, extra: NodeJS.ProcessEnv = {}) {
  const kind: Kind = name === 'transaction' || name === 'pgbouncer' ? 'ours' : name;
  const child = spawn('./server.ts', [kind], serverEnv(name, extra));
  const [report] = (await once(child, 'message')) as [ServerReport];
  if (!('url' in report)) throw new Error(`the ${name} server did not start`);
  return {
    name,
    url: report.url,
    async counters(): Promise<Counters> {
      const answer = once(child, 'message');
      child.send('counters' satisfies ServerMessage);
      return ((await answer) as [{ counters: Counters }])[0].counters;
    },
    /** Resolves once the server has taken its counts' starting point. */
    async reset() {
      const answer = once(child, 'message');
      child.send('reset' satisfies ServerMessage);
      await answer;
    },
  };
}

type Server = Awaited<ReturnType<typeof startServer>>;

async function load(request: LoadRequest): Promise<LoadResult> {
  const worker = startWorker(new URL('./load.ts', import.meta.url), request);
  const [result] = (await once(worker, 'message')) as [LoadResult];
  await worker.terminate();
  return result;
}

async function mint(users: BenchUser[]) {
  return Promise.all(users.map((user) => tokenFor(key, user)));
}

/**
 * Servers compared side by side: each is warmed up with its tokens, then they take turns for
 * `ROUNDS` measured runs (the order alternating), so that a noisy moment on a shared machine
 * falls on both. Each row is the median round of its server; the counts are over all measured
 * rounds, warm-ups left out. Only the server whose turn it is gets requests, and idle servers send
 * the database nothing, so what PostgreSQL ran during a round is that server's doing.
 */
async function compare(scenario: string, contenders: { server: Server; tokens: string[] }[]): Promise<Row[]> {
  const base = (server: Server, tokens: string[]) => ({ url: server.url, path: PATH, tokens, connections: CONNECTIONS });
  for (const { server, tokens } of contenders) await load({ ...base(server, tokens), durationSeconds: WARMUP_SECONDS });
  const rounds = contenders.map(() => [] as LoadResult[]);
  const counters = contenders.map(() => newCounters());
  const statements = contenders.map((): StatementCounts | undefined => ({ statements: 0, transactions: 0 }));
  for (let round = 0; round < ROUNDS; round += 1) {
    const order = contenders.map((_, index) => index);
    if (round % 2 === 1) order.reverse();
    for (const index of order) {
      const { server, tokens } = contenders[index]!;
      const { result, counts } = await statementCounter.measure(async () => {
        await server.reset();
        return load({ ...base(server, tokens), durationSeconds: MEASURE_SECONDS });
      });
      rounds[index]!.push(result);
      statements[index] = addStatements(statements[index], counts);
      addCounters(counters[index]!, await server.counters());
    }
  }
  return contenders.map(({ server }, index) => {
    const byRate = [...rounds[index]!].sort((a, b) => a.perSecond - b.perSecond);
    const all = rounds[index]!;
    const row: Row = {
      scenario,
      name: server.name,
      load: byRate[Math.floor(byRate.length / 2)]!,
      statements: statements[index],
      counters: counters[index]!,
      requests: all.reduce((sum, result) => sum + result.requests, 0),
      failures: all.reduce((sum, result) => sum + result.failures, 0),
    };
    progress(row);
    return row;
  });
}

function addCounters(total: Counters, more: Counters) {
  total.signatureChecks += more.signatureChecks;
}

function addStatements(total: StatementCounts | undefined, more: StatementCounts | undefined) {
  return total && more
    ? { statements: total.statements + more.statements, transactions: total.transactions + more.transactions }
    : undefined;
}

/** Each token once: every request is its person's first. */
async function firstLogins(scenario: string, server: Server, tokens: string[]): Promise<Row> {
  const { result, counts } = await statementCounter.measure(async () => {
    await server.reset();
    return load({ url: server.url, path: PATH, tokens, connections: CONNECTIONS, amount: tokens.length });
  });
  const row = {
    scenario,
    name: server.name,
    load: result,
    statements: counts,
    counters: await server.counters(),
    requests: result.requests,
    failures: result.failures,
  };
  progress(row);
  return row;
}

let bouncer: PgBouncer | undefined;

/**
 * Ours with DATABASE_POOL_MODE=transaction: on the same direct connection as `ours`, and behind a
 * real PgBouncer in transaction mode when one is installed. Migrations go to the direct URL.
 */
async function startPooledServers(databaseUrl: string): Promise<Server[]> {
  const transactionMode = { DATABASE_POOL_MODE: 'transaction', DATABASE_DIRECT_URL: databaseUrl };
  const servers = [await startServer('transaction', { ...transactionMode, DATABASE_URL: databaseUrl })];
  const binary = findPgBouncer();
  if (binary) {
    // As many server connections as the server's own pool holds (DATABASE_POOL_SIZE, 10).
    bouncer = await startPgBouncer(binary, { upstreamUrl: databaseUrl, poolMode: 'transaction', poolSize: 10 });
    servers.push(await startServer('pgbouncer', { ...transactionMode, DATABASE_URL: bouncer.urlFor(databaseUrl) }));
  }
  return servers;
}

function progress(row: Row) {
  process.stderr.write(`  ${row.scenario}, ${row.name}: ${Math.round(row.load.perSecond)} requests/s\n`);
}

async function heapRun(): Promise<HeapReport> {
  const child = spawn('./heap.ts', [], serverEnv('heap'), ['--expose-gc']);
  const [report] = (await once(child, 'message')) as [HeapReport];
  return report;
}

try {
  const started = performance.now();
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const cores = os.availableParallelism();
  const databaseLabel = serverUrl
    ? `PostgreSQL (${serverUrl.source}), a new database dropped afterwards`
    : 'embedded PGlite, in this process tree: the targets are for PostgreSQL, set DATABASE_URL';
  process.stderr.write(`Benchmarking on ${cores} cores (${cpu}), Node ${process.version}, ${databaseLabel}\n`);

  const [floor, seed, ours] = await Promise.all((['floor', 'seed', 'ours'] as const).map((name) => startServer(name)));
  // DATABASE_POOL_MODE=transaction needs PostgreSQL; behind PgBouncer when it is installed.
  const pooled = database ? await startPooledServers(database.url) : [];
  const [seedOne, oursOne] = [newUsers(1, 1), newUsers(1, 1)];
  const [seedMany, oursMany] = [newUsers(MANY_USERS, 20), newUsers(MANY_USERS, 20)];
  const [seedFirst, oursFirst] = [newUsers(FIRST_LOGINS, 20), newUsers(FIRST_LOGINS, 20)];
  const tokens = {
    seedOne: await mint(seedOne),
    oursOne: await mint(oursOne),
    seedMany: await mint(seedMany),
    oursMany: await mint(oursMany),
    seedFirst: await mint(seedFirst),
    oursFirst: await mint(oursFirst),
    pooledFirst: await Promise.all(pooled.map(() => mint(newUsers(FIRST_LOGINS, 20)))),
  };

  const rows = [
    ...(await compare('1 user', [
      { server: floor!, tokens: tokens.oursOne },
      { server: ours!, tokens: tokens.oursOne },
      { server: seed!, tokens: tokens.seedOne },
      ...pooled.map((server) => ({ server, tokens: tokens.oursOne })),
    ])),
    ...(await compare(`${MANY_USERS} users`, [
      { server: seed!, tokens: tokens.seedMany },
      { server: ours!, tokens: tokens.oursMany },
      ...pooled.map((server) => ({ server, tokens: tokens.oursMany })),
    ])),
    await firstLogins(`${FIRST_LOGINS} first logins`, seed!, tokens.seedFirst),
    await firstLogins(`${FIRST_LOGINS} first logins`, ours!, tokens.oursFirst),
  ];
  for (const [index, server] of pooled.entries()) {
    rows.push(await firstLogins(`${FIRST_LOGINS} first logins`, server, tokens.pooledFirst[index]!));
  }
  const heap = await heapRun();
  // A second instance of ours on the same PostgreSQL, for events crossing between instances.
  const fanOutServers = database ? [ours!, await startServer('ours')] : [ours!];
  const fanOut = await measureFanOut({
    urls: fanOutServers.map((server) => server.url),
    tokens: await mint(newUsers(FANOUT_PEOPLE, FANOUT_PEOPLE)),
    tabsPerPerson: FANOUT_TABS,
    rounds: FANOUT_ROUNDS,
  });
  process.stderr.write(`  fan-out: p50 ${fanOut.oneAtATime.p50Ms.toFixed(1)} ms one at a time, ${fanOut.allAtOnce.p50Ms.toFixed(1)} ms all at once\n`);

  const rate = (scenario: string, name: Name) =>
    rows.find((row) => row.scenario.startsWith(scenario) && row.name === name)?.load.perSecond ?? Number.NaN;
  printReport({
    cores,
    cpu,
    databaseLabel,
    rows,
    heap,
    fanOut,
    seconds: (performance.now() - started) / 1000,
    rate,
    statementsUnavailable: statementCounter.unavailable,
    poolerNote: !database
      ? 'DATABASE_POOL_MODE=transaction is not measured: it needs PostgreSQL.'
      : !bouncer
        ? 'Not measured behind PgBouncer: no pgbouncer binary (apt-get install pgbouncer).'
        : undefined,
  });
  if (fanOut.missing > 0) {
    process.stderr.write(`${fanOut.missing} events never reached their subscriber.\n`);
    process.exitCode = 1;
  }
  if (rows.some((row) => row.failures > 0)) {
    process.stderr.write('Some requests failed (see the failures column): the figures above are not comparable.\n');
    process.exitCode = 1;
  }
} finally {
  for (const child of children) child.kill();
  await bouncer?.close();
  await statementCounter.close();
  await database?.drop();
  await rm(work, { recursive: true, force: true });
}

function printReport(report: {
  cores: number;
  cpu: string;
  databaseLabel: string;
  rows: Row[];
  heap: HeapReport;
  fanOut: FanOutResult;
  seconds: number;
  rate: (scenario: string, name: Name) => number;
  /** Why the transaction-mode rows are missing, or run without PgBouncer. */
  poolerNote: string | undefined;
  /** Why statements/req and transactions/req read n/a, when they do. */
  statementsUnavailable: string | undefined;
}) {
  const { rows, heap, fanOut, rate } = report;
  const names: Record<Name, string> = {
    floor: 'bare tRPC, a constant',
    seed: 'seed design',
    ours: 'this server',
    transaction: 'this server, transaction mode',
    pgbouncer: 'this server via PgBouncer',
  };
  const perRequest = (value: number | undefined, row: Row) => (value === undefined ? 'n/a' : (value / row.requests).toFixed(2));
  const table = [
    ['scenario', 'server', 'requests/s', 'p50 ms', 'p99 ms', 'statements/req', 'transactions/req', 'RS256 checks/req', 'failures'],
    ...rows.map((row) => [
      row.scenario,
      names[row.name],
      Math.round(row.load.perSecond).toString(),
      row.load.p50Ms.toFixed(1),
      row.load.p99Ms.toFixed(1),
      perRequest(row.statements?.statements, row),
      perRequest(row.statements?.transactions, row),
      perRequest(row.counters.signatureChecks, row),
      row.failures.toString(),
    ]),
  ];
  const widths = table[0]!.map((_, column) => Math.max(...table.map((line) => line[column]!.length)));
  const line = (cells: string[]) => `| ${cells.map((cell, column) => cell.padEnd(widths[column]!)).join(' | ')} |`;
  const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}x`;

  const out = [
    '',
    `Machine: ${report.cores} cores (${report.cpu}), Node ${process.version}; database: ${report.databaseLabel}.`,
    `Load: autocannon in a worker thread, ${CONNECTIONS} connections, GET ${PATH}. Servers compared take turns: ${WARMUP_SECONDS} s warm-up each,`,
    `then ${ROUNDS} rounds of ${MEASURE_SECONDS} s; requests/s and latency are each server's median round. First logins: each token once.`,
    'statements/req counts every statement sent, begin and commit included; transactions/req counts begin. Both come from',
    "PostgreSQL (pg_stat_statements: the bench database over each server's turns, the bench's own queries left out), with",
    'one commit or rollback taken per begin, as the extension misses prepared ones. RS256 checks/req: the verifier\'s accept hook.',
    ...(report.statementsUnavailable ? [`statements/req and transactions/req are n/a: ${report.statementsUnavailable}.`] : []),
    '',
    line(table[0]!),
    line(widths.map((width) => '-'.repeat(width))),
    ...table.slice(1).map(line),
    '',
    `this server, 1 user / bare tRPC:            ${ratio(rate('1 user', 'ours'), rate('1 user', 'floor'))}  (target >= 0.6x)`,
    `this server / seed design, ${MANY_USERS} users:      ${ratio(rate(`${MANY_USERS} users`, 'ours'), rate(`${MANY_USERS} users`, 'seed'))}  (target >= 2x)`,
    `this server / seed design, first logins:   ${ratio(rate(`${FIRST_LOGINS} first`, 'ours'), rate(`${FIRST_LOGINS} first`, 'seed'))}`,
    ...(['transaction', 'pgbouncer'] as const)
      .filter((name) => rows.some((row) => row.name === name))
      .map(
        (name) =>
          `${names[name]} / this server: ${['1 user', `${MANY_USERS} users`, `${FIRST_LOGINS} first`]
            .map((scenario) => `${ratio(rate(scenario, name), rate(scenario, 'ours'))} (${scenario.replace(' first', ' first logins')})`)
            .join(', ')}`,
      ),
    ...(report.poolerNote ? [report.poolerNote] : []),
    '',
    `Heap after ${heap.tokens.toLocaleString('en')} distinct tokens of ${heap.people.toLocaleString('en')} people (verifier and member cache as npm start configures them): ` +
      `${heap.heapAfterMb.toFixed(1)} MB, from ${heap.heapBeforeMb.toFixed(1)} MB before (+${(heap.heapAfterMb - heap.heapBeforeMb).toFixed(1)} MB, limit +${HEAP_GROWTH_LIMIT_MB} MB); ` +
      `${heap.signatureChecks.toLocaleString('en')} signature checks, ${heap.rememberedPeople} people remembered.`,
    `Live events (chat.events): ${fanOut.people * fanOut.tabsPerPerson} subscribers of one organization (${fanOut.people} people, ` +
      `${fanOut.tabsPerPerson} tabs each, spread over ${fanOut.instances} instance${fanOut.instances === 1 ? '' : 's'}); messages sent through the first ` +
      `instance, timed from the sendMessage call to message.created on each of the sender's tabs:`,
    ...([
      ['one person at a time', fanOut.oneAtATime],
      [`all ${fanOut.people} at once, ${fanOut.rounds} times`, fanOut.allAtOnce],
    ] as const).map(
      ([label, latencies]) =>
        `  ${label.padEnd(24)} p50 ${latencies.p50Ms.toFixed(1)} ms, p99 ${latencies.p99Ms.toFixed(1)} ms, max ${latencies.maxMs.toFixed(1)} ms ` +
        `over ${latencies.samples.toLocaleString('en')} receipts (the sendMessage answers themselves: p50 ${latencies.answeredP50Ms.toFixed(1)} ms)`,
    ),
    `  ${fanOut.missing} never arrived.`,
    `Whole run: ${report.seconds.toFixed(0)} s.`,
    '',
  ];
  process.stdout.write(out.join('\n'));
}

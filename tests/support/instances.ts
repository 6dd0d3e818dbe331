import { pino } from 'pino';
import { openDatabase } from '../../db/database.js';
import { startServer } from '../../server/app.js';
import { type Config, loadConfig } from '../../server/config.js';
import { createEmptyDatabase } from './database.js';
import { type TestIdentityProvider, startIdentityProvider } from './identity-provider.js';

/**
 * What `npm start` would load in production on this PostgreSQL `url`, trusting `idp`, listening
 * on a free loopback port: the configuration's own defaults, from `loadConfig`, with `overrides`.
 */
export function productionConfig(url: string, idp: TestIdentityProvider, overrides: Partial<Config> = {}): Config {
  const config = loadConfig({
    NODE_ENV: 'production',
    DATABASE_URL: url,
    FRONTEGG_BASE_URL: 'https://unused.example',
    ASSISTANT_REPLIES: 'off',
  });
  return {
    ...config,
    logLevel: 'silent',
    database: { kind: 'postgres', url, poolSize: 4 },
    identity: {
      mode: 'frontegg',
      issuer: idp.issuer,
      jwksUrl: idp.jwksUrl,
      audience: [idp.audience],
      keySet: config.identity.mode === 'frontegg' ? config.identity.keySet : { maxAgeMs: 600_000, cooldownMs: 30_000 },
    },
    port: 0,
    host: '127.0.0.1',
    ...overrides,
  };
}

/**
 * `count` instances of the server, started at once as `npm start` starts them in production (each
 * migrates under the advisory lock, then listens), on a new empty database of this run's
 * PostgreSQL, trusting one test identity provider, configured as `productionConfig` with
 * `overrides`. `database` is a small pool of the test's own on that database. PostgreSQL only:
 * PGlite belongs to a single process.
 */
export async function startInstances(prefix: string, count: number, overrides: Partial<Config> = {}) {
  const empty = (await createEmptyDatabase(prefix))!;
  const idp = await startIdentityProvider();
  const log = pino({ level: 'silent' });
  const config = productionConfig(empty.url, idp, overrides);
  const servers = await Promise.all(Array.from({ length: count }, () => startServer(config, log)));
  const database = openDatabase({ kind: 'postgres', url: empty.url, poolSize: 2 });
  return {
    config,
    servers,
    idp,
    database,
    async close() {
      await Promise.all(servers.map((server) => server.close()));
      await database.close();
      await idp.close();
      await empty.drop();
    },
  };
}

export type Instances = Awaited<ReturnType<typeof startInstances>>;

import type { Config } from '../../server/config.js';
import { loadConfig } from '../../server/config.js';
import type { TestIdentityProvider } from './identity-provider.js';

/**
 * What `npm start` would load in production on this PostgreSQL `url`, trusting `idp`, listening
 * on a free loopback port: the configuration's own defaults, from `loadConfig`, with `overrides`.
 */
export function productionConfig(url: string, idp: TestIdentityProvider, overrides: Partial<Config> = {}): Config {
  const config = loadConfig({ NODE_ENV: 'production', DATABASE_URL: url, FRONTEGG_BASE_URL: 'https://unused.example' });
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

import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { openDatabase } from '../db/database.js';
import { type AccessTokenVerifier, createAccessTokenVerifier } from './auth/access-token.js';
import { createRemoteKeySet } from './auth/key-set.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER, createLocalKeySet, loadOrCreateLocalSigningKey } from './auth/local-identity.js';
import type { Config, IdentityConfig } from './config.js';
import { createSharedCursorCodec } from './cursor.js';
import { createHttpServer } from './http.js';
import type { Logger } from './logger.js';

export interface RunningServer {
  url: string;
  /** Stops accepting connections, lets in-flight requests finish, then closes the database. */
  close(): Promise<void>;
}

/** Opens the database, applies pending migrations and listens. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const database = openDatabase(config.database);
  await database.migrate();
  log.info({ database: database.kind }, 'Database ready, migrations applied');

  const server = createHttpServer({
    db: database.db,
    log,
    verifyAccessToken: await createConfiguredVerifier(config.identity, log),
    cursors: await createSharedCursorCodec(database.db),
    pingDatabase: database.ping,
    procedureTimeoutMs: config.procedureTimeoutMs,
  });
  server.listen(config.port, config.host);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  log.info({ url, port }, 'Listening');

  return {
    url,
    async close() {
      const closed = once(server, 'close');
      // Since Node 19, close() also closes idle keep-alive connections.
      server.close();
      await closed;
      await database.close();
    },
  };
}

async function createConfiguredVerifier(identity: IdentityConfig, log: Logger): Promise<AccessTokenVerifier> {
  if (identity.mode === 'frontegg') {
    log.info({ issuer: identity.issuer, jwksUrl: identity.jwksUrl, audience: identity.audience }, 'Verifying Frontegg tokens');
    return createAccessTokenVerifier({
      keySet: createRemoteKeySet({ jwksUrl: identity.jwksUrl, ...identity.keySet, log }),
      issuer: identity.issuer,
      audience: identity.audience,
    });
  }
  const key = await loadOrCreateLocalSigningKey(identity.keyFile);
  log.warn(
    { keyFile: identity.keyFile, kid: key.kid },
    'LOCAL IDENTITY MODE: no Frontegg environment is configured, so only tokens from `npm run token` are ' +
      'trusted. Set FRONTEGG_BASE_URL to verify real Frontegg tokens. Never run this way in production.',
  );
  return createAccessTokenVerifier({ keySet: createLocalKeySet(key), issuer: LOCAL_ISSUER, audience: [LOCAL_AUDIENCE] });
}

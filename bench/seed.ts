import { TRPCError, initTRPC } from '@trpc/server';
import { createHTTPServer } from '@trpc/server/adapters/standalone';
import { and, eq } from 'drizzle-orm';
import superjson from 'superjson';
import { type Database, openDatabase } from '../db/database.js';
import { type IdentityClaims, mapFronteggRoles, organizationSlugCandidates } from '../db/provisioning.js';
import { chatSessions, organizationMembers, organizations, users } from '../db/schema.js';
import { type AccessTokenVerifierOptions, createAccessTokenVerifier, parseBearerToken } from '../server/auth/access-token.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER, createLocalKeySet, loadOrCreateLocalSigningKey } from '../server/auth/local-identity.js';
import type { Config } from '../server/config.js';
import { listen } from './listen.js';

/**
 * The baseline: the seed's design, written plainly on the same schema, driver, tRPC adapter and
 * transformer. Every request verifies its token, selects the organization, user and membership,
 * inserts what is missing, updates `last_login`, then reads or creates the active session:
 * five statements a warm request, each its own transaction.
 */
export async function startSeedServer(
  config: Pick<Config, 'database' | 'identity' | 'port' | 'host'>,
  { onTokenAccepted }: { onTokenAccepted?: AccessTokenVerifierOptions['onAccepted'] } = {},
) {
  if (config.identity.mode !== 'local') throw new Error('the bench signs its own tokens: run it without FRONTEGG_*');
  const database = openDatabase(config.database);
  await database.migrate();
  const verify = createAccessTokenVerifier({
    keySet: createLocalKeySet(await loadOrCreateLocalSigningKey(config.identity.keyFile)),
    issuer: LOCAL_ISSUER,
    audience: [LOCAL_AUDIENCE],
    cacheEntries: 0,
    onAccepted: onTokenAccepted,
  });

  const t = initTRPC.context<{ identity: IdentityClaims | undefined }>().create({ transformer: superjson });
  const router = t.router({
    chat: t.router({
      getActiveSession: t.procedure.query(({ ctx }) => {
        if (!ctx.identity) throw new TRPCError({ code: 'UNAUTHORIZED' });
        return seedGetActiveSession(database.db, ctx.identity);
      }),
    }),
  });
  const server = createHTTPServer({
    router,
    basePath: '/trpc/',
    async createContext({ req }) {
      const token = parseBearerToken(req.headers.authorization);
      return { identity: token ? (await verify(token).catch(() => undefined))?.identity : undefined };
    },
  });
  return listen(server, config, database.close);
}

async function seedGetActiveSession(db: Database, identity: IdentityClaims) {
  const { tenantId, userId } = identity;
  const [organization] = await db.select().from(organizations).where(eq(organizations.id, tenantId));
  if (!organization) {
    const slug = organizationSlugCandidates(tenantId)[1]!;
    await db
      .insert(organizations)
      .values({ id: tenantId, name: identity.name ?? slug, slug, s3BucketName: `org-${slug}` })
      .onConflictDoNothing();
  }
  const [user] = await db.select().from(users).where(eq(users.id, userId));
  if (user) {
    await db.update(users).set({ lastLogin: new Date() }).where(eq(users.id, userId));
  } else {
    await db
      .insert(users)
      .values({ id: userId, email: identity.email ?? null, name: identity.name ?? null, lastLogin: new Date() })
      .onConflictDoNothing();
  }
  const member = and(eq(organizationMembers.userId, userId), eq(organizationMembers.organizationId, tenantId));
  const [membership] = await db.select().from(organizationMembers).where(member);
  if (!membership) {
    await db
      .insert(organizationMembers)
      .values({ userId, organizationId: tenantId, role: mapFronteggRoles(identity.roles) })
      .onConflictDoNothing();
  }
  const active = and(
    eq(chatSessions.userId, userId),
    eq(chatSessions.organizationId, tenantId),
    eq(chatSessions.isActive, true),
  );
  const [session] = await db.select().from(chatSessions).where(active);
  if (session) return session;
  await db.insert(chatSessions).values({ userId, organizationId: tenantId, isActive: true }).onConflictDoNothing();
  const [created] = await db.select().from(chatSessions).where(active);
  return created;
}

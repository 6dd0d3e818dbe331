import { defineConfig } from 'drizzle-kit';
import { claimPgliteDataDir } from './db/pglite-data-dir.js';

// Same rule as the server: DATABASE_URL when set, the embedded PGlite otherwise. Migrations take
// a session lock, so they go to DATABASE_DIRECT_URL when there is one (behind a
// transaction-mode pooler).
const databaseUrl = process.env.DATABASE_DIRECT_URL || process.env.DATABASE_URL;
const pgliteDataDir = process.env.PGLITE_DATA_DIR ?? '.data/pglite';

// The commands that open the database (not `generate`, which compares the schema with the
// migration files). drizzle-kit opens PGlite itself: its folder must exist, and no running server
// may hold it.
const opensDatabase = ['migrate', 'push', 'pull', 'introspect', 'studio'].some((command) => process.argv.includes(command));
if (!databaseUrl && opensDatabase) claimPgliteDataDir(pgliteDataDir);

export default defineConfig({
  dialect: 'postgresql',
  schema: './db/schema.ts',
  out: './db/migrations',
  strict: true,
  ...(databaseUrl ? { dbCredentials: { url: databaseUrl } } : { driver: 'pglite', dbCredentials: { url: pgliteDataDir } }),
});

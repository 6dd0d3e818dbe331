import { defineConfig } from 'drizzle-kit';

// Same rule as the server: DATABASE_URL when set, the embedded PGlite otherwise.
const databaseUrl = process.env.DATABASE_URL;

export default defineConfig({
  dialect: 'postgresql',
  schema: './db/schema.ts',
  out: './db/migrations',
  strict: true,
  ...(databaseUrl
    ? { dbCredentials: { url: databaseUrl } }
    : { driver: 'pglite', dbCredentials: { url: process.env.PGLITE_DATA_DIR ?? '.data/pglite' } }),
});

import { inject } from 'vitest';
import { type DatabaseHandle, openDatabase } from '../../db/database.js';

/** This run's PostgreSQL database when DATABASE_URL is set, else a fresh in-memory PGlite. */
export async function openTestDatabase(): Promise<DatabaseHandle> {
  const url = inject('databaseUrl');
  const database = openDatabase(url ? { kind: 'postgres', url } : { kind: 'pglite' });
  await database.migrate();
  return database;
}

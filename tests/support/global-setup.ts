import type { TestProject } from 'vitest/node';
import { createDatabase } from '../../db/throwaway-database.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** A database made for this run, or undefined to run on the embedded PGlite. */
    databaseUrl: string | undefined;
  }
}

/** With DATABASE_URL set, every run gets a fresh database of its own, dropped afterwards. */
export default async function setup(project: TestProject) {
  const serverUrl = process.env.DATABASE_URL;
  project.provide('databaseUrl', undefined);
  if (!serverUrl) return;

  const database = await createDatabase(serverUrl, 'test');
  project.provide('databaseUrl', database.url);
  return database.drop;
}

import { randomBytes } from 'node:crypto';
import postgres from 'postgres';

/**
 * A new database with a random name on the PostgreSQL server of `serverUrl`, and how to drop it:
 * each test run and each `npm run bench` gets one, so runs never see each other's rows.
 */
export async function createDatabase(serverUrl: string, prefix: string) {
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  await admin.unsafe(`create database "${name}"`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      await admin.unsafe(`drop database if exists "${name}" with (force)`);
      await admin.end();
    },
  };
}

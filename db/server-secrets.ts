import { randomBytes } from 'node:crypto';
import { eq } from 'drizzle-orm';
import type { Database } from './database.js';
import { serverSecrets } from './schema.js';

/**
 * The secret named `name`, created on first use. Instances starting together may each offer one;
 * the first insert wins and all of them read the winner, so every instance signs alike.
 */
export async function getOrCreateServerSecret(db: Database, { name }: { name: string }): Promise<Buffer> {
  await db
    .insert(serverSecrets)
    .values({ name, secret: randomBytes(32).toString('base64url') })
    .onConflictDoNothing({ target: serverSecrets.name });
  const [row] = await db.select({ secret: serverSecrets.secret }).from(serverSecrets).where(eq(serverSecrets.name, name));
  if (!row) throw new Error(`server secret ${name} is missing right after its insert`);
  return Buffer.from(row.secret, 'base64url');
}

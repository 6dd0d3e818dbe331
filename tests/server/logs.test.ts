import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serializeError } from '../../server/logger.js';
import { whileInsertsFail } from '../support/database.js';
import { clientError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

describe('the log of a failed statement', () => {
  let app: TestApp;
  let http: Awaited<ReturnType<typeof startHttpServer>>;
  beforeAll(async () => {
    app = await startTestApp();
    http = await startHttpServer(app);
  });
  afterAll(async () => {
    await http.close();
    await app.close();
  });

  it('names the statement and the error code, never the text of the message sent', async () => {
    const client = http.clientFor(await app.idp.mintToken());
    const session = await client.chat.getActiveSession.query();
    const content = `my private words ${randomUUID()}`;
    const failure = { table: 'chat_messages', column: 'content', value: content, message: 'refused by the test' };
    const error = await whileInsertsFail(app.db, failure, () =>
      clientError(client.chat.sendMessage.mutate({ sessionId: session.id, content })),
    );
    expect(error.data?.httpStatus).toBe(500);

    const failed = app.logs.find((line) => line.msg === 'Request failed' && line.path === 'chat.sendMessage');
    expect(failed).toBeDefined();
    const logged = JSON.stringify(failed);
    expect(logged).toContain('insert into \\"chat_messages\\"');
    expect(logged).toContain('"code":"P0001"');
    expect(logged).toContain('refused by the test');
    expect(JSON.stringify(app.logs)).not.toContain(content);
  });

  it('never carries the email of a person whose first sign-in failed', async () => {
    const sub = randomUUID();
    const email = `someone.${randomUUID()}@example.com`;
    const failure = { table: 'users', column: 'id', value: sub, message: 'refused by the test' };
    const token = await app.idp.mintToken({ claims: { sub, email } });
    const error = await whileInsertsFail(app.db, failure, () => clientError(http.clientFor(token).me.query()));
    expect(error.data?.httpStatus).toBe(500);
    const failed = app.logs.filter((line) => line.msg === 'Request failed' && JSON.stringify(line).includes('refused by the test'));
    expect(failed.length).toBeGreaterThan(0);
    expect(JSON.stringify(app.logs)).not.toContain(email);
    expect(JSON.stringify(app.logs)).not.toContain(token);
  });

  it('withholds the message of a data exception, which quotes the value', async () => {
    const value = `not a uuid ${randomUUID()}`;
    const error = await app.db.execute(sql`select ${value}::uuid`).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    // The driver's own error does quote it: what the log must not repeat.
    expect(JSON.stringify(String((error as Error).cause))).toContain(value);
    const serialized = JSON.stringify(serializeError(error));
    expect(serialized).not.toContain(value);
    expect(serialized).toContain('"code":"22P02"');
    expect(serialized).toContain('select $1::uuid');
  });
});

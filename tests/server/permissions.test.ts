import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasPermission } from '../../server/auth/permissions.js';
import { clientError, expectTRPCError } from '../support/errors.js';
import { type TestApp, startHttpServer, startTestApp } from '../support/test-app.js';

let app: TestApp;
beforeAll(async () => {
  app = await startTestApp();
});
afterAll(() => app.close());

describe('hasPermission', () => {
  it.each([
    [['fe.secure.read.users'], 'fe.secure.read.users', true],
    [['fe.secure.*'], 'fe.secure.read.users', true],
    [['fe.*'], 'fe.secure.read.users', true],
    [['fe.*'], 'fe.secure.*', true],
    [['fe.connectivity.*', 'fe.secure.read.*'], 'fe.secure.read.users', true],
    [[], 'fe.secure.read.users', false],
    [['fe.secure.write.users'], 'fe.secure.read.users', false],
    [['fe.secure.read.*'], 'fe.secure.write.users', false],
    // A prefix counts only up to a dot, and a `.*` key grants what lies under it, not itself without the star.
    [['fe.secure.*'], 'fe.securex.read', false],
    [['fe.secure.*'], 'fe.secure', false],
    [['fe.secure.read'], 'fe.secure.read.users', false],
    // Only a trailing `.*` is a pattern.
    [['*'], 'fe.secure.read.users', false],
    [['fe.*.read.users'], 'fe.secure.read.users', false],
    [['FE.SECURE.*'], 'fe.secure.read.users', false],
  ] as const)('%j grants %s: %s', (held, required, expected) => {
    expect(hasPermission(held, required)).toBe(expected);
  });
});

describe('the token’s permissions on the context', () => {
  it('me returns the permissions and tenants of the token', async () => {
    const tenantId = randomUUID();
    const other = randomUUID();
    const me = await (await app.as({ tenantId, permissions: ['fe.secure.*', 'app.chat.write'], tenantIds: [other, tenantId] })).me();
    expect(me).toMatchObject({ permissions: ['fe.secure.*', 'app.chat.write'], tenantIds: [other, tenantId] });
  });

  it('are empty, and the tenants the current one, when the token template leaves them out', async () => {
    const tenantId = randomUUID();
    const me = await (await app.as({ tenantId, permissions: undefined, tenantIds: undefined, roles: undefined })).me();
    expect(me).toMatchObject({ permissions: [], tenantIds: [tenantId], role: 'member' });
  });
});

describe('org.members: admins, or fe.secure.read.users', () => {
  const member = (tenantId: string, permissions: string[] | undefined) => app.as({ tenantId, roles: ['Editor'], permissions });

  it('is open to a member holding fe.secure.read.users, or a key ending in .* above it', async () => {
    const tenantId = randomUUID();
    for (const permissions of [['fe.secure.read.users'], ['fe.secure.*'], ['fe.*'], ['fe.connectivity.*', 'fe.secure.read.*']]) {
      const { items } = await (await member(tenantId, permissions)).org.members();
      expect(items.length).toBeGreaterThan(0);
    }
  });

  it('is open to an admin whose token holds no permission at all', async () => {
    const tenantId = randomUUID();
    const { items } = await (await app.as({ tenantId, roles: ['Admin'], permissions: [] })).org.members();
    expect(items.map((item) => item.role)).toEqual(['admin']);
  });

  it('answers FORBIDDEN naming the permission to a member without it', async () => {
    const tenantId = randomUUID();
    for (const permissions of [[], undefined, ['fe.secure.write.users', 'fe.connectivity.*'], ['fe.secure']]) {
      const error = await expectTRPCError((await member(tenantId, permissions)).org.members(), 'FORBIDDEN');
      expect(error.message).toBe('This requires the permission "fe.secure.read.users" or the admin role in the organization');
    }
  });

  it('answers 403 with that message through the HTTP adapter and the typed client', async () => {
    const http = await startHttpServer(app);
    try {
      const token = await app.idp.mintToken({ claims: { roles: ['Editor'], permissions: ['fe.connectivity.*'] } });
      const error = await clientError(http.clientFor(token).org.members.query());
      expect(error.data).toMatchObject({ code: 'FORBIDDEN', httpStatus: 403 });
      expect(error.message).toMatch(/"fe\.secure\.read\.users"/);
    } finally {
      await http.close();
    }
  });

  it('does not let permissions open what needs the admin role (org.usage)', async () => {
    await expectTRPCError((await app.as({ roles: ['Editor'], permissions: ['fe.*'] })).org.usage(), 'FORBIDDEN');
  });
});

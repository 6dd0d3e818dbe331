import { protectedProcedure } from '../trpc.js';

/**
 * The caller as the server knows them: their user row, current organization and role in it; and as
 * their token says: its permission keys and every tenant they belong to.
 */
export const me = protectedProcedure.query(({ ctx: { auth, user, organization, membership } }) => ({
  user: {
    id: user.id,
    email: user.email,
    name: user.name,
    avatarUrl: user.avatarUrl,
    emailVerified: user.emailVerified,
    fronteggRoles: user.profileData.frontegg_roles ?? [],
    lastLogin: user.lastLogin,
    createdAt: user.createdAt,
    updatedAt: user.updatedAt,
  },
  organization: {
    id: organization.id,
    name: organization.name,
    slug: organization.slug,
    s3BucketName: organization.s3BucketName,
    createdAt: organization.createdAt,
    updatedAt: organization.updatedAt,
  },
  role: membership.role,
  permissions: auth.permissions,
  tenantIds: auth.tenantIds,
}));

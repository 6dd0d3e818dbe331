import { sql } from 'drizzle-orm';
import {
  boolean,
  check,
  index,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
} from 'drizzle-orm/pg-core';

// Millisecond precision: a JavaScript Date round-trips exactly, so timestamps are safe in cursors.
const timestampMs = (name: string) => timestamp(name, { withTimezone: true, precision: 3 });
const createdAt = () => timestampMs('created_at').notNull().defaultNow();
const updatedAt = () => timestampMs('updated_at').notNull().defaultNow();

export const memberRoles = ['admin', 'member', 'viewer'] as const;
export type MemberRole = (typeof memberRoles)[number];

/** One row per Frontegg tenant; `id` is the token's `tenantId`, stored as it comes. */
export const organizations = pgTable(
  'organizations',
  {
    id: text('id').primaryKey(),
    name: text('name').notNull(),
    slug: text('slug').notNull().unique(),
    s3BucketName: text('s3_bucket_name').notNull().unique(),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (table) => [
    check('organizations_slug_format', sql`${table.slug} ~ '^[a-z0-9]+(-[a-z0-9]+)*$'`),
    // S3's rules: 3 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit.
    check(
      'organizations_s3_bucket_name_format',
      sql`${table.s3BucketName} ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'`,
    ),
  ],
);

export interface UserProfileData {
  frontegg_roles?: string[];
  [key: string]: unknown;
}

/** One row per Frontegg user; `id` is the token's `sub`. */
export const users = pgTable('users', {
  id: text('id').primaryKey(),
  email: text('email'),
  name: text('name'),
  avatarUrl: text('avatar_url'),
  emailVerified: boolean('email_verified').notNull().default(false),
  profileData: jsonb('profile_data').$type<UserProfileData>().notNull().default({}),
  lastLogin: timestampMs('last_login'),
  createdAt: createdAt(),
  updatedAt: updatedAt(),
});

export const organizationMembers = pgTable(
  'organization_members',
  {
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    organizationId: text('organization_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    role: text('role', { enum: memberRoles }).notNull(),
    isActive: boolean('is_active').notNull().default(true),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (table) => [
    primaryKey({ columns: [table.userId, table.organizationId] }),
    check('organization_members_role_check', sql`${table.role} in ('admin', 'member', 'viewer')`),
    // Serves listing an organization's members in joining order.
    index('organization_members_organization_created_idx').on(
      table.organizationId,
      table.createdAt,
      table.userId,
    ),
  ],
);

export type Organization = typeof organizations.$inferSelect;
export type User = typeof users.$inferSelect;
export type OrganizationMember = typeof organizationMembers.$inferSelect;

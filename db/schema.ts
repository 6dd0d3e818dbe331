import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  check,
  foreignKey,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
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
    /** When Frontegg said the tenant was deleted (`frontegg.tenant.deleted`); cleared when it creates the tenant again. */
    fronteggDeletedAt: timestampMs('frontegg_deleted_at'),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (table) => [
    check('organizations_slug_format', sql`${table.slug} ~ '^[a-z0-9]+(-[a-z0-9]+)*$'`),
    // S3's rules: 3 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit,
    // and not ending the way S3's access points and other features do.
    check(
      'organizations_s3_bucket_name_format',
      sql`${table.s3BucketName} ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$' and ${table.s3BucketName} !~ '(-s3alias|--ol-s3|--x-s3|--table-s3)$'`,
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
  /** When the profile was true as of, as `organization_members.role_as_of` is for the role. */
  profileAsOf: timestampMs('profile_as_of'),
  /** When Frontegg said the user was deleted (`frontegg.user.deleted`): final, ids are never reused. */
  fronteggDeletedAt: timestampMs('frontegg_deleted_at'),
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
    /**
     * When the role was true as of: the `iat` of the token it came from, or when a Frontegg webhook
     * set it. An older token (one issued before a demotion) does not set it back.
     */
    roleAsOf: timestampMs('role_as_of'),
    /** Set by an operator only (there is no API for it): `false` keeps the member out whatever Frontegg says. */
    isActive: boolean('is_active').notNull().default(true),
    /**
     * When Frontegg's webhooks said the member left (removed from the tenant, the user or the tenant
     * deleted); cleared when they say the member is back. Apart from `is_active`, so that Frontegg
     * never undoes an operator's deactivation. A member may sign in only with both clear.
     */
    fronteggRemovedAt: timestampMs('frontegg_removed_at'),
    /**
     * When the member last used this organization (written at most once a minute): what its admins
     * see, where `users.last_login` would show a shared person's activity in other tenants.
     */
    lastSeenAt: timestampMs('last_seen_at'),
    /**
     * The id of the member's latest chat event in this organization (`chat_events.seq`). Raised
     * under this row's lock in the transaction that records the event, so each member's event ids
     * follow commit order and are never reused, even after old events are deleted.
     */
    lastEventSeq: bigint('last_event_seq', { mode: 'number' }).notNull().default(0),
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

export const DEFAULT_SESSION_TITLE = 'New Chat';

/** A user's conversation inside one organization. */
export const chatSessions = pgTable(
  'chat_sessions',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    userId: text('user_id').notNull(),
    organizationId: text('organization_id').notNull(),
    title: text('title').notNull().default(DEFAULT_SESSION_TITLE),
    isActive: boolean('is_active').notNull().default(true),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (table) => [
    // A session exists only for a membership, and goes with it.
    foreignKey({
      name: 'chat_sessions_membership_fk',
      columns: [table.userId, table.organizationId],
      foreignColumns: [organizationMembers.userId, organizationMembers.organizationId],
    }).onDelete('cascade'),
    check('chat_sessions_title_length', sql`char_length(${table.title}) between 1 and 200`),
    // At most one active session per user per organization, whatever races.
    uniqueIndex('chat_sessions_one_active_idx')
      .on(table.userId, table.organizationId)
      .where(sql`${table.isActive}`),
    // Serves listing a user's sessions in an organization by recent activity (scanned backwards).
    index('chat_sessions_user_org_updated_idx').on(table.userId, table.organizationId, table.updatedAt, table.id),
  ],
);

export const messageRoles = ['user', 'assistant', 'system'] as const;
export type MessageRole = (typeof messageRoles)[number];

/**
 * A person's message is `complete` when stored. An assistant's reply is `streaming` while the
 * model writes it, then `complete`, `failed` (the provider refused, broke off or went silent, or
 * the instance running it stopped) or `stopped` (by the person); it keeps the text received.
 */
export const messageStatuses = ['streaming', 'complete', 'failed', 'stopped'] as const;
export type MessageStatus = (typeof messageStatuses)[number];

export const chatMessages = pgTable(
  'chat_messages',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    // Conversation order: two messages stored in the same millisecond (a question and its answer)
    // still come back in the order they were stored, which neither created_at nor a uuid gives.
    seq: bigint('seq', { mode: 'number' }).notNull().generatedAlwaysAsIdentity(),
    sessionId: uuid('session_id')
      .notNull()
      .references(() => chatSessions.id, { onDelete: 'cascade' }),
    role: text('role', { enum: messageRoles }).notNull(),
    content: text('content').notNull(),
    status: text('status', { enum: messageStatuses }).notNull().default('complete'),
    /** For a reply: the model that wrote it, and the tokens the provider reported. */
    model: text('model'),
    inputTokens: integer('input_tokens'),
    outputTokens: integer('output_tokens'),
    /**
     * While a reply streams: the instance writing it renews this; once it has passed, the
     * instance is taken for dead and any instance marks the reply failed.
     */
    leaseExpiresAt: timestampMs('lease_expires_at'),
    createdAt: createdAt(),
  },
  (table) => [
    check('chat_messages_role_check', sql`${table.role} in ('user', 'assistant', 'system')`),
    check('chat_messages_status_check', sql`${table.status} in ('streaming', 'complete', 'failed', 'stopped')`),
    check('chat_messages_lease_check', sql`(${table.status} = 'streaming') = (${table.leaseExpiresAt} is not null)`),
    // Serves paging a session's messages from the newest back.
    index('chat_messages_session_seq_idx').on(table.sessionId, table.seq),
    // One reply streaming per session, whatever races; also finds the replies streaming now.
    uniqueIndex('chat_messages_one_streaming_idx')
      .on(table.sessionId)
      .where(sql`${table.status} = 'streaming'`),
  ],
);

export const chatEventTypes = [
  'session.created',
  'session.updated',
  'session.deleted',
  'message.created',
  'reply.delta',
  'reply.completed',
  'reply.failed',
] as const;
export type ChatEventType = (typeof chatEventTypes)[number];

/** A session as an event stores it: `Session` with its dates as ISO strings. */
export interface StoredSession {
  id: string;
  title: string;
  isActive: boolean;
  createdAt: string;
  updatedAt: string;
}

/** A message as an event stores it: `Message` with its date as an ISO string. */
export interface StoredMessage {
  id: string;
  sessionId: string;
  role: MessageRole;
  content: string;
  status: MessageStatus;
  createdAt: string;
}

/** What an event holds beyond its ids, by type. */
export interface ChatEventData {
  /** `reply.delta`: the new text. */
  text?: string;
  /** `message.created` of a reply: the message as it was then (its text grows afterwards). */
  message?: StoredMessage;
  /** `reply.failed`: why, in a word. */
  reason?: string;
}

/**
 * What changed in a member's chats, in the order it committed: what `chat.events` replays to a
 * subscriber that reconnects. Kept for the retention the server is configured with
 * (`CHAT_EVENTS_RETENTION_MINUTES`), then deleted. A message event refers to its message rather
 * than copying its text; a session event holds the session as it was then. A reply's
 * text arrives as `reply.delta` events, each holding its piece.
 */
export const chatEvents = pgTable(
  'chat_events',
  {
    userId: text('user_id').notNull(),
    organizationId: text('organization_id').notNull(),
    /** The member's own sequence: 1, 2, 3, ... in commit order (see `lastEventSeq`). */
    seq: bigint('seq', { mode: 'number' }).notNull(),
    type: text('type', { enum: chatEventTypes }).notNull(),
    // No foreign keys to the session or message: the event outlives them (`session.deleted`).
    sessionId: uuid('session_id').notNull(),
    messageId: uuid('message_id'),
    session: jsonb('session').$type<StoredSession>(),
    data: jsonb('data').$type<ChatEventData>(),
    createdAt: createdAt(),
  },
  (table) => [
    primaryKey({ columns: [table.userId, table.organizationId, table.seq] }),
    foreignKey({
      name: 'chat_events_membership_fk',
      columns: [table.userId, table.organizationId],
      foreignColumns: [organizationMembers.userId, organizationMembers.organizationId],
    }).onDelete('cascade'),
    check(
      'chat_events_type_check',
      sql`${table.type} in ('session.created', 'session.updated', 'session.deleted', 'message.created', 'reply.delta', 'reply.completed', 'reply.failed')`,
    ),
    // Serves deleting the events past the retention.
    index('chat_events_created_idx').on(table.createdAt),
  ],
);

/**
 * What each assistant reply cost, for `org.usage`: kept apart from the message so that deleting a
 * conversation does not delete what the organization used. One row per reply, written when it ends.
 */
export const replyUsage = pgTable(
  'reply_usage',
  {
    messageId: uuid('message_id').primaryKey(),
    organizationId: text('organization_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    userId: text('user_id').notNull(),
    model: text('model').notNull(),
    /** As the provider reported them; null when it reported none (a stopped or failed reply). */
    inputTokens: integer('input_tokens'),
    outputTokens: integer('output_tokens'),
    createdAt: createdAt(),
  },
  (table) => [
    // Serves summing an organization's usage over a period.
    index('reply_usage_organization_created_idx').on(table.organizationId, table.createdAt),
  ],
);

/**
 * Secrets the instances of this service share, created on first start: every instance on one
 * database agrees on them without configuration.
 */
export const serverSecrets = pgTable('server_secrets', {
  name: text('name').primaryKey(),
  /** base64url of random bytes: text reads back the same from both drivers, unlike bytea. */
  secret: text('secret').notNull(),
  createdAt: createdAt(),
});

export type Organization = typeof organizations.$inferSelect;
export type User = typeof users.$inferSelect;
export type OrganizationMember = typeof organizationMembers.$inferSelect;
export type ChatSession = typeof chatSessions.$inferSelect;
export type ChatMessage = typeof chatMessages.$inferSelect;
export type ChatEventRow = typeof chatEvents.$inferSelect;

CREATE TABLE "chat_events" (
	"user_id" text NOT NULL,
	"organization_id" text NOT NULL,
	"seq" bigint NOT NULL,
	"type" text NOT NULL,
	"session_id" uuid NOT NULL,
	"message_id" uuid,
	"session" jsonb,
	"created_at" timestamp (3) with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "chat_events_user_id_organization_id_seq_pk" PRIMARY KEY("user_id","organization_id","seq"),
	CONSTRAINT "chat_events_type_check" CHECK ("chat_events"."type" in ('session.created', 'session.updated', 'session.deleted', 'message.created'))
);
--> statement-breakpoint
ALTER TABLE "organization_members" ADD COLUMN "last_event_seq" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "chat_events" ADD CONSTRAINT "chat_events_membership_fk" FOREIGN KEY ("user_id","organization_id") REFERENCES "public"."organization_members"("user_id","organization_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "chat_events_created_idx" ON "chat_events" USING btree ("created_at");
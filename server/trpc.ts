import { TRPCError, initTRPC } from '@trpc/server';
import superjson from 'superjson';
import { ZodError, z } from 'zod';
import { AccessTokenError } from './auth/access-token.js';
import type { Context } from './context.js';

const t = initTRPC.context<Context>().create({
  transformer: superjson,
  // Stack traces stay in the logs, never in responses.
  isDev: false,
  errorFormatter({ shape, error }) {
    const { stack: _stack, ...data } = shape.data;
    // Anything not thrown on purpose (driver errors, bugs) reaches the caller as a generic message.
    const internal = error.code === 'INTERNAL_SERVER_ERROR';
    const invalidInput = error.code === 'BAD_REQUEST' && error.cause instanceof ZodError;
    return {
      ...shape,
      message: internal ? 'Internal server error' : invalidInput ? 'Invalid input' : shape.message,
      data: {
        ...data,
        authReason: error.cause instanceof AccessTokenError ? error.cause.reason : null,
        validation: invalidInput ? z.flattenError(error.cause as ZodError) : null,
      },
    };
  },
});

export const router = t.router;
export const createCallerFactory = t.createCallerFactory;
export const publicProcedure = t.procedure;

/** Every procedure built on this sees `ctx.user`, `ctx.organization` and `ctx.membership` as present. */
export const protectedProcedure = t.procedure.use(({ ctx, next }) => {
  if (ctx.auth.status !== 'signed-in') throw ctx.auth.error;
  const { user, organization, membership } = ctx.auth;
  if (!membership.isActive) {
    throw new TRPCError({ code: 'FORBIDDEN', message: 'Your membership in this organization is deactivated' });
  }
  return next({ ctx: { user, organization, membership } });
});

export const adminProcedure = protectedProcedure.use(({ ctx, next }) => {
  if (ctx.membership.role !== 'admin') {
    throw new TRPCError({ code: 'FORBIDDEN', message: 'This requires the admin role in the organization' });
  }
  return next();
});

import { TRPCClientError } from '@trpc/client';
import { TRPCError } from '@trpc/server';
import { expect } from 'vitest';
import type { AppRouter } from '../../client/index.js';

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => null,
    (error: unknown) => error,
  );
}

/** The `TRPCError` a `createCaller` call was refused with, after checking its code. */
export async function expectTRPCError(promise: Promise<unknown>, code: TRPCError['code']): Promise<TRPCError> {
  const error = await rejection(promise);
  expect(error).toBeInstanceOf(TRPCError);
  expect((error as TRPCError).code).toBe(code);
  return error as TRPCError;
}

/** The error a typed-client call over HTTP was refused with. */
export async function clientError(promise: Promise<unknown>): Promise<TRPCClientError<AppRouter>> {
  const error = await rejection(promise);
  expect(error).toBeInstanceOf(TRPCClientError);
  return error as TRPCClientError<AppRouter>;
}

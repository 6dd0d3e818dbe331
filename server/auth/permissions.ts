/**
 * Whether Frontegg permission keys `held` (a token's `permissions`) grant `required`: one of them
 * is `required` itself, or ends in `.*` and `required` lies under it (`fe.secure.*` grants
 * `fe.secure.read.users`, `fe.*` grants `fe.secure.*`). Frontegg's default Admin role carries such
 * keys; Frontegg's Node SDK compares keys exactly, so there it would not. Nothing else is a
 * pattern: `*` alone, or a `*` elsewhere in a key, is an ordinary character.
 */
export function hasPermission(held: readonly string[], required: string): boolean {
  return held.some((key) => key === required || (key.endsWith('.*') && required.startsWith(key.slice(0, -1))));
}

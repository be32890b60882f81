/**
 * Placeholder: being written (issue 3).
 *
 * @packageDocumentation
 */

/** The ops of this family, spread into the public `ops` object by lib/ops/index.ts. */
export const nnOps = {};

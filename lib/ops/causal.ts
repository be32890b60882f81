/** SKELETON: causal Luna attention ops (issue 5). */
export const causalOps = {};

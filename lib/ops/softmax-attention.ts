/** SKELETON: softmax attention op (issue 7). */
export const softmaxOps = {};

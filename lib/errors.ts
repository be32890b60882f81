/**
 * The one error type of luna-attention and the helpers that build its messages.
 *
 * Every check in lib/ goes through these helpers so that all messages share one shape:
 * `<where>: <argument> expected <expected>, got <actual>`. Callers can branch on the stable
 * `code`; people read the message.
 *
 * @packageDocumentation
 */

/** The stable error codes. New codes may be added; existing ones never change meaning. */
export type LunaErrorCode =
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_DEVICE'
  | 'ERR_DISPOSED'
  | 'ERR_DEVICE_UNAVAILABLE'
  | 'ERR_CUDA'
  | 'ERR_NATIVE_LOAD'
  | 'ERR_ARGUMENT';

/**
 * The error every public function of luna-attention throws for a bad call or an unusable
 * backend. `code` is stable and meant for programs; `message` names the argument, the expected
 * and the actual value.
 */
export class LunaError extends Error {
  /** The stable error code, e.g. `'ERR_SHAPE'`. */
  readonly code: LunaErrorCode;

  /**
   * Makes an error with a stable code. The library builds these itself; programs catch them and
   * branch on `code`.
   *
   * @param code - one of {@link LunaErrorCode}
   * @param message - the full message: the function, the argument, what was expected and what came
   * @param options - `cause`: the underlying error, kept for debugging
   */
  constructor(code: LunaErrorCode, message: string, options?: { cause?: unknown }) {
    super(message);
    // Keep instanceof working even if a consumer compiles us down to ES5-style classes.
    Object.setPrototypeOf(this, new.target.prototype);
    this.code = code;
    if (options !== undefined && 'cause' in options) {
      // Set by hand: the `Error(message, { cause })` form needs lib es2022, which the
      // build's tsconfig may not include.
      Object.defineProperty(this, 'cause', {
        value: options.cause,
        enumerable: false,
        writable: true,
        configurable: true,
      });
    }
  }
}

// Defined on the prototype (not as a class field) so `name` is not an own enumerable property
// that shows up in every console.log of an error object.
Object.defineProperty(LunaError.prototype, 'name', {
  value: 'LunaError',
  enumerable: false,
  writable: true,
  configurable: true,
});

/** Formats a shape the way messages show it: `[2,3,5,8]`. */
export function formatShape(shape: readonly (number | string)[]): string {
  return `[${shape.join(',')}]`;
}

/**
 * Describes any value briefly for the "got ..." part of a message. Tensors describe themselves
 * through `toString()`; arrays print their first elements; long strings are cut.
 */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  switch (typeof value) {
    case 'number':
      return Object.is(value, -0) ? '-0' : String(value);
    case 'string':
      return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
    case 'boolean':
    case 'bigint':
      return `${String(value)}${typeof value === 'bigint' ? 'n' : ''}`;
    case 'function':
      return 'a function';
    case 'symbol':
      return value.toString();
    default:
      break;
  }
  if (Array.isArray(value)) {
    const head = value.slice(0, 8).map((x) => (Array.isArray(x) ? '[...]' : describe(x)));
    return `[${head.join(',')}${value.length > 8 ? ',...' : ''}]`;
  }
  if (ArrayBuffer.isView(value)) {
    const ctor = (value as object).constructor.name;
    const len = (value as unknown as { length?: number }).length;
    return len === undefined ? ctor : `${ctor}(${len})`;
  }
  const ctor = (value as object).constructor;
  if (ctor === undefined || ctor === Object) return 'an object';
  // Tensor overrides toString with its dtype and shape; other classes show their name.
  const own = (value as { toString?: () => string }).toString;
  if (typeof own === 'function' && own !== Object.prototype.toString) {
    try {
      return own.call(value);
    } catch {
      // A throwing toString must not hide the real error we are building.
    }
  }
  return `an instance of ${ctor.name || 'an anonymous class'}`;
}

/**
 * Builds the standard error: `<where>: <arg> expected <expected>, got <got>`.
 * `got` is used verbatim when it is a string; pass `describe(x)` for raw values.
 *
 * @example
 * mismatch('ERR_SHAPE', 'packAttention', 'k.shape', '[2,4,*,8] (B,h,m,dh matching q)', '[2,3,5,8]')
 */
export function mismatch(
  code: LunaErrorCode,
  where: string,
  arg: string,
  expected: string,
  got: string,
): LunaError {
  return new LunaError(code, `${where}: ${arg} expected ${expected}, got ${got}`);
}

/** Throws ERR_ARGUMENT unless `value` is an integer in [min, max]. Returns it typed. */
export function checkInteger(
  where: string,
  arg: string,
  value: unknown,
  min: number,
  max: number = Number.MAX_SAFE_INTEGER,
): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const range =
      max === Number.MAX_SAFE_INTEGER
        ? min === 0
          ? 'a non-negative integer'
          : min === 1
            ? 'a positive integer'
            : `an integer >= ${min}`
        : `an integer in [${min}, ${max}]`;
    throw mismatch('ERR_ARGUMENT', where, arg, range, describe(value));
  }
  return value;
}

/** Throws ERR_ARGUMENT unless `value` is a positive safe integer (optionally at most `max`). */
export function checkPositiveInt(where: string, arg: string, value: unknown, max?: number): number {
  return checkInteger(where, arg, value, 1, max);
}

/** Throws ERR_ARGUMENT unless `value` is a non-negative safe integer (optionally at most `max`). */
export function checkNonNegativeInt(
  where: string,
  arg: string,
  value: unknown,
  max?: number,
): number {
  return checkInteger(where, arg, value, 0, max);
}

/** Throws ERR_ARGUMENT unless `value` is a finite number (not NaN, not +-Infinity). */
export function checkFinite(where: string, arg: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw mismatch('ERR_ARGUMENT', where, arg, 'a finite number', describe(value));
  }
  return value;
}

/** Throws ERR_ARGUMENT unless `value` is a boolean. */
export function checkBoolean(where: string, arg: string, value: unknown): boolean {
  if (typeof value !== 'boolean') {
    throw mismatch('ERR_ARGUMENT', where, arg, 'a boolean', describe(value));
  }
  return value;
}

/** Throws ERR_ARGUMENT unless `value` is a function. */
export function checkFunction(where: string, arg: string, value: unknown): void {
  if (typeof value !== 'function') {
    throw mismatch('ERR_ARGUMENT', where, arg, 'a function', describe(value));
  }
}

/**
 * Checks an options argument: `undefined` means "no options"; anything else must be a plain
 * object whose keys are all in `allowed`. Keys whose value is `undefined` count as absent, so
 * `{ scale: undefined }` behaves like `{}`. Returns the object (or `{}`) for the caller to
 * validate each value; the caller names values `options.<key>` in its own messages.
 *
 * Unknown keys are refused rather than ignored because a misspelt option (`keyPaddingmask`)
 * would otherwise silently change results.
 */
export function checkOptions(
  where: string,
  options: unknown,
  allowed: readonly string[],
): Record<string, unknown> {
  if (options === undefined) return {};
  if (
    options === null ||
    typeof options !== 'object' ||
    Array.isArray(options) ||
    ArrayBuffer.isView(options)
  ) {
    throw mismatch('ERR_ARGUMENT', where, 'options', 'an options object', describe(options));
  }
  const proto = Object.getPrototypeOf(options) as unknown;
  if (proto !== Object.prototype && proto !== null) {
    throw mismatch('ERR_ARGUMENT', where, 'options', 'a plain options object', describe(options));
  }
  for (const key of Object.keys(options)) {
    if (!allowed.includes(key)) {
      const known = allowed.length > 0 ? allowed.join(', ') : 'none';
      throw new LunaError(
        'ERR_ARGUMENT',
        `${where}: options has unknown key ${JSON.stringify(key)} (known keys: ${known})`,
      );
    }
  }
  return options as Record<string, unknown>;
}

/**
 * Declared shapes of the admin API's JSON bodies, checked before a handler runs: each field's
 * type and bounds, which fields are required, and which are alternatives. A body that does not
 * match is a 400 naming the field.
 */

export type Field =
  | { readonly type: 'string'; readonly pattern?: RegExp; readonly describe?: string; readonly latin1?: boolean }
  | { readonly type: 'integer'; readonly min?: number; readonly max?: number }
  | { readonly type: 'object' };

export interface Schema {
  /** Every field the body may have, and whether it must. */
  readonly fields: Readonly<Record<string, Field & { readonly optional?: boolean }>>;
  /** Exactly one of these fields is present (they are then all optional otherwise). */
  readonly oneOf?: readonly string[];
  /** When set, the body may have any field (a table): only its being an object is checked. */
  readonly open?: boolean;
}

/** Checks `body` against `schema`; returns it as a record, or a reason for a 400. */
export function check(schema: Schema, body: unknown, what = 'the body'): Record<string, unknown> | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return `${what} must be a JSON object`;
  const b = body as Record<string, unknown>;
  if (schema.open === true) return b;
  const names = Object.keys(schema.fields);
  for (const k of Object.keys(b)) if (!Object.hasOwn(schema.fields, k)) return `unknown field "${k}"; known: ${names.join(', ')}`;
  if (schema.oneOf !== undefined) {
    const present = schema.oneOf.filter((k) => b[k] !== undefined);
    if (present.length !== 1) return `${what} must have exactly one of ${schema.oneOf.map((k) => `"${k}"`).join(' or ')}`;
  }
  for (const [name, field] of Object.entries(schema.fields)) {
    const value = b[name];
    if (value === undefined) {
      if (field.optional !== true && !(schema.oneOf ?? []).includes(name)) return `${name} is required`;
      continue;
    }
    const wrong = checkField(name, field, value);
    if (wrong !== undefined) return wrong;
  }
  return b;
}

function checkField(name: string, field: Field, value: unknown): string | undefined {
  switch (field.type) {
    case 'string':
      if (typeof value !== 'string') return `${name} must be a string`;
      if (field.latin1 === true && /[^\u0000-\u00ff]/.test(value)) return `${name} has a character above U+00FF; send bytes as base64`;
      if (field.pattern !== undefined && !field.pattern.test(value)) return `${name} must be ${field.describe ?? `of the form ${field.pattern.source}`}`;
      return undefined;
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) return `${name} must be an integer`;
      if ((field.min !== undefined && value < field.min) || (field.max !== undefined && value > field.max)) return `${name} must be an integer from ${field.min ?? '-∞'} to ${field.max ?? '∞'}`;
      return undefined;
    case 'object':
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return `${name} must be a JSON object`;
      return undefined;
    default: {
      const never: never = field;
      return `unknown field type ${String(never)}`;
    }
  }
}

/** The bodies of the admin API. */
export const schemas = {
  createTenant: { fields: { name: { type: 'string' }, port: { type: 'integer', optional: true } } },
  route: {
    fields: {
      data: { type: 'string', latin1: true },
      base64: { type: 'string', pattern: /^[A-Za-z0-9+/_-]*={0,2}$/, describe: 'a base64 string' },
      version: { type: 'integer', min: 1, optional: true },
    },
    oneOf: ['data', 'base64'],
  },
  replay: { fields: { version: { type: 'integer', min: 1 } } },
  table: { fields: {}, open: true },
} as const satisfies Record<string, Schema>;
